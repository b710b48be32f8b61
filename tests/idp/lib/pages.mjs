// HTML pages of the demo provider. Every element that a browser script touches has a stable id
// (see README.md, "Page contract"); the pages have no scripts and load nothing from elsewhere.

/** Escapes text for HTML element content and attribute values. */
export function esc(value) {
  return String(value ?? '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

const STYLE = `
body{font-family:system-ui,sans-serif;background:#f3f4f6;margin:0;padding:40px 0}
main{max-width:380px;margin:0 auto;background:#fff;border-radius:8px;padding:24px 32px;box-shadow:0 1px 4px rgba(0,0,0,.15)}
h1{font-size:1.3em;margin-top:0}label{display:block;margin:12px 0 4px}
input{width:100%;box-sizing:border-box;padding:8px;font-size:1em}
button{margin-top:16px;padding:8px 16px;font-size:1em;cursor:pointer}
.error{color:#b91c1c;background:#fee2e2;padding:8px;border-radius:4px}
.hint{color:#6b7280;font-size:.85em}code{background:#f3f4f6;padding:0 3px}`;

function layout(title, pageId, inner) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>${esc(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<main id="${pageId}" data-page="${pageId}" data-idp="portcullis-demo">
<h1>${esc(title)}</h1>
${inner}
</main>
</body>
</html>
`;
}

function errorBlock(id, message) {
  return message ? `<p id="${id}" class="error" role="alert">${esc(message)}</p>` : '';
}

/** The username + password page (`#login-page`). */
export function loginPage({ uid, clientName, loginHint, error, reasons }) {
  return layout('Sign in to the Portcullis demo provider', 'login-page', `
<p>Application: <strong id="client-name">${esc(clientName)}</strong></p>
${errorBlock('login-error', error)}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="username">Username</label>
<input id="username" name="username" type="text" value="${esc(loginHint)}" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" required>
<button id="login-submit" type="submit">Sign in</button>
</form>
<form id="cancel-form" method="post" action="/interaction/${esc(uid)}/abort">
<button id="login-cancel" type="submit">Cancel</button>
</form>
<p class="hint" id="login-reasons">Reasons: ${esc((reasons || []).join(', '))}</p>
<p class="hint">Demo users: alice, bob, carol, dave, erin (password: <code>&lt;name&gt;-password</code>).</p>`);
}

/** The one-time code page (`#otp-page`). */
export function otpPage({ uid, username, error, stepUp }) {
  return layout('Multi-factor authentication', 'otp-page', `
<p>Signed in as <strong id="otp-user">${esc(username)}</strong>.
${stepUp ? 'The application asks for a stronger sign-in.' : ''}</p>
${errorBlock('otp-error', error)}
<form id="otp-form" method="post" action="/interaction/${esc(uid)}/otp" autocomplete="off">
<label for="otp">One-time code</label>
<input id="otp" name="otp" type="text" inputmode="numeric" pattern="[0-9]*" required autofocus>
<button id="otp-submit" type="submit">Verify</button>
</form>
<form id="cancel-form" method="post" action="/interaction/${esc(uid)}/abort">
<button id="otp-cancel" type="submit">Cancel</button>
</form>
<p class="hint">Demo one-time code: <code>123456</code>.</p>`);
}

/** The RP-initiated logout confirmation page (`#logout-page`); `form` is oidc-provider's hidden form. */
export function logoutPage({ form, clientName }) {
  return layout('Sign out', 'logout-page', `
<p>Sign out of the Portcullis demo provider${clientName ? ` (requested by <strong>${esc(clientName)}</strong>)` : ''}?</p>
${form}
<button id="logout-confirm" type="submit" form="op.logoutForm" name="logout" value="yes" autofocus>Yes, sign me out</button>
<button id="logout-cancel" type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

/** Shown after logout when the client gave no post_logout_redirect_uri (`#logged-out-page`). */
export function loggedOutPage({ clientName }) {
  return layout('Signed out', 'logged-out-page', `
<p id="logged-out">You are signed out${clientName ? ` of ${esc(clientName)}` : ''}.</p>`);
}

/** Error page (`#error-page`, code in `#error-code`). */
export function errorPage({ error, description }) {
  return layout('Sign-in error', 'error-page', `
<p>Error: <code id="error-code">${esc(error)}</code></p>
<p id="error-description">${esc(description)}</p>`);
}
