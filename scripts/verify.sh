#!/usr/bin/env bash
# Drives the whole-system checks against a running stack (docker-compose or `make demo`; the
# URLs are the same), with curl only: no browser. The provider's login pages are plain HTML
# forms, so the sign-ins are done by posting them, as a browser would.
#
#   scripts/verify.sh [BASE_URL]          default http://127.0.0.1:10000
#
# Environment:
#   VERIFY_ISSUER      the OpenID provider the browser sees   (default http://127.0.0.1:9000)
#   VERIFY_ADMIN_URL   the MFA-protected app                   (default https://admin.localhost:10443
#                      for the demo's http://…:10000, else admin.localhost on BASE_URL's scheme and
#                      port; it is reached at BASE_URL's address whatever admin.localhost resolves to)
#   VERIFY_CACERT      CA file for https URLs (default: the demo certificate envoy-configs/certs/demo.crt,
#                      pinned by its public key; set but empty: the system's CAs)
#   VERIFY_WAIT        seconds to wait for the stack to answer (default 0)
#   VERIFY_SIGNIN=0    skip the checks that sign users in (the anonymous checks still run)
#
# Users and passwords are the demo provider's (tests/idp/README.md). Prints one line per check
# and ends with "N passed, N failed"; exits 1 when a check failed, 2 on bad usage.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
base=${1:-http://127.0.0.1:10000}
base=${base%/}
issuer=${VERIFY_ISSUER:-http://127.0.0.1:9000}
issuer=${issuer%/}
wait_secs=${VERIFY_WAIT:-0}
signin=${VERIFY_SIGNIN:-1}

if [[ ! $base =~ ^(https?)://([^/:]+|\[[0-9a-fA-F:]+\])(:([0-9]+))?$ ]]; then
  echo "usage: $0 [BASE_URL]   e.g. $0 http://127.0.0.1:10000" >&2
  exit 2
fi
scheme=${BASH_REMATCH[1]}
base_host=${BASH_REMATCH[2]}
base_port=${BASH_REMATCH[4]:-}
if [[ -z $base_port ]]; then
  if [[ $scheme == https ]]; then base_port=443; else base_port=80; fi
fi
# The session cookie is Secure: curl keeps it over plain http for 127.0.0.1 and localhost, not
# for admin.localhost, so the admin app is checked over the demo's HTTPS listener by default.
if [[ -n ${VERIFY_ADMIN_URL:-} ]]; then
  admin_base=${VERIFY_ADMIN_URL%/}
elif [[ $scheme == http && $base_port == 10000 ]]; then
  admin_base=https://admin.localhost:10443
else
  admin_base="$scheme://admin.localhost:$base_port"
fi
if [[ ! $admin_base =~ ^(https?)://([^/:]+)(:([0-9]+))?$ ]]; then
  echo "VERIFY_ADMIN_URL must look like https://admin.localhost:10443" >&2
  exit 2
fi
admin_scheme=${BASH_REMATCH[1]}
admin_host=${BASH_REMATCH[2]}
admin_port=${BASH_REMATCH[4]:-}
if [[ -z $admin_port ]]; then
  if [[ $admin_scheme == https ]]; then admin_port=443; else admin_port=80; fi
fi
command -v curl >/dev/null || { echo "verify.sh needs curl" >&2; exit 2; }

curl_opts=(--silent --show-error --max-time 20)
demo_cert=$root/envoy-configs/certs/demo.crt
if [[ -n ${VERIFY_CACERT:-} ]]; then
  curl_opts+=(--cacert "$VERIFY_CACERT")
elif [[ -z ${VERIFY_CACERT+set} && -f $demo_cert ]] && command -v openssl >/dev/null; then
  # The demo certificate: pinned by its public key. Name checks are off because OpenSSL (and so
  # curl) does not accept its single-label wildcard *.localhost for admin.localhost.
  pin=$(openssl x509 -in "$demo_cert" -noout -pubkey | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | openssl base64)
  curl_opts+=(--insecure --pinnedpubkey "sha256//$pin")
elif [[ -z ${VERIFY_CACERT+set} && -f $demo_cert ]]; then
  curl_opts+=(--cacert "$demo_cert")
fi
# The admin app is told apart by its Host; reach it at the base URL's address.
curl_opts+=(--connect-to "$admin_host:$admin_port:$base_host:$admin_port")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok     %s\n' "$1"; }
fail() {
  failed=$((failed + 1))
  printf 'FAIL   %s\n' "$1"
  [[ -n ${2:-} ]] && printf '       %s\n' "${2:0:400}"
  return 0
}
check() { # check NAME CONDITION-STATUS [DETAIL]
  if [[ $2 == 0 ]]; then ok "$1"; else fail "$1" "${3:-}"; fi
}

# fetch NAME [curl args...]: one request; sets $status, $size (body bytes), $body_file,
# $headers_file and $url (the last URL when following redirects).
fetch() {
  local name=$1
  shift
  body_file="$work/$name.body"
  headers_file="$work/$name.headers"
  local out
  : >"$body_file"
  : >"$headers_file"
  out=$(curl "${curl_opts[@]}" -o "$body_file" -D "$headers_file" \
    -w '%{http_code} %{size_download} %{url_effective}' "$@" 2>"$work/$name.err") || true
  status=${out%% *}
  out=${out#* }
  size=${out%% *}
  url=${out#* }
}
header() { # header NAME: the last value of that response header in $headers_file
  grep -i "^$1:" "$headers_file" | tail -n 1 | cut -d: -f2- | sed 's/^ *//; s/\r$//'
}
has_param() { # has_param URL NAME [VALUE]
  local query=${1#*\?}
  if [[ -n ${3:-} ]]; then
    [[ "&$query&" == *"&$2=$3&"* ]]
  else
    [[ "&$query&" =~ \&$2=[^\&]+\& ]]
  fi
}

if [[ $wait_secs -gt 0 ]]; then
  deadline=$((SECONDS + wait_secs))
  until curl "${curl_opts[@]}" -o /dev/null "$base/robots.txt" 2>/dev/null; do
    if [[ $SECONDS -ge $deadline ]]; then
      echo "nothing answers at $base after ${wait_secs}s" >&2
      break
    fi
    sleep 1
  done
fi

echo "# verifying $base (provider $issuer, MFA app $admin_base)"

# --- robots.txt, served by the robots filter without sign-in -------------------------------
fetch robots "$base/robots.txt"
expected=$'User-agent: *\nDisallow: /\n'
check "GET /robots.txt answers 200 without sign-in" "$([[ $status == 200 ]]; echo $?)" "status $status"
check "robots.txt body is exactly 'User-agent: *\\nDisallow: /\\n'" \
  "$([[ $(cat "$body_file"; printf x) == "${expected}x" ]]; echo $?)" "$(head -c 200 "$body_file")"
check "robots.txt is text/plain" "$([[ $(header content-type) == text/plain* ]]; echo $?)" "$(header content-type)"
fetch robots_query "$base/robots.txt?x=1"
check "GET /robots.txt?x=1 is served the same (query ignored)" \
  "$([[ $status == 200 && $(cat "$body_file"; printf x) == "${expected}x" ]]; echo $?)" "status $status"
fetch robots_head --head "$base/robots.txt"
check "HEAD /robots.txt answers 200 with no body" "$([[ $status == 200 && $size == 0 ]]; echo $?)" "status $status, $size bytes"
fetch robots_upper -H 'Accept: text/html' "$base/ROBOTS.TXT"
check "GET /ROBOTS.TXT is the same path under the path rule: answered by robots" \
  "$([[ $status == 200 ]] && grep -q 'Disallow: /' "$body_file"; echo $?)" "status $status"
fetch robots_bak -H 'Accept: text/html' "$base/robots.txt.bak"
check "GET /robots.txt.bak is not a robots request (sign-in required)" "$([[ $status == 302 ]]; echo $?)" "status $status"
fetch ambiguous -H 'Accept: application/json' "$base/admin%2fx"
check "GET /admin%2fx is refused before any decision (400 ambiguous_path)" \
  "$([[ $status == 400 ]] && grep -q '"ambiguous_path"' "$body_file"; echo $?)" "status $status"

# --- anonymous requests never reach an app ----------------------------------------------------
auth_endpoint=$(curl "${curl_opts[@]}" "$issuer/.well-known/openid-configuration" 2>/dev/null |
  grep -o '"authorization_endpoint":"[^"]*"' | cut -d'"' -f4)
check "the provider publishes its discovery document" "$([[ -n $auth_endpoint ]]; echo $?)" "$issuer"
fetch anon_page -H 'Accept: text/html' "$base/headers"
location=$(header location)
check "GET / without a session is redirected (302) to the provider" \
  "$([[ $status == 302 && -n $auth_endpoint && $location == "$auth_endpoint?"* ]]; echo $?)" \
  "status $status, location $location"
for p in response_type=code state nonce code_challenge code_challenge_method=S256 redirect_uri client_id; do
  name=${p%%=*}
  value=${p#*=}
  [[ $value == "$p" ]] && value=
  check "the authorization request carries $p" "$(has_param "$location" "$name" "$value"; echo $?)" "$location"
done
check "the login sets a state cookie" "$(grep -qi '^set-cookie:' "$headers_file"; echo $?)"
fetch anon_api -H 'Accept: application/json' "$base/headers"
check "an API request without a session gets 401, not a redirect" "$([[ $status == 401 ]]; echo $?)" "status $status"
fetch me_anon "$base/.auth/me"
check "/.auth/me answers 401 without a session" "$([[ $status == 401 ]]; echo $?)" "status $status"
fetch forged -H 'Accept: text/html' -H 'X-Forwarded-User: mallory' -H 'X-Forwarded_User: mallory' \
  -H 'Cookie: __Host-portcullis=AQEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' "$base/headers"
check "spoofed identity headers and a forged session cookie do not get in" \
  "$([[ $status == 302 || $status == 401 ]] && ! grep -q mallory "$body_file"; echo $?)" "status $status"
fetch redirect_out -H 'Accept: text/html' "$base/.auth/login?rd=//evil.example/"
location=$(header location)
check "/.auth/login?rd=//evil.example/ does not redirect off the app's origin" \
  "$([[ $status =~ ^[2345] && $location != //* && $location != http*://evil.example* ]]; echo $?)" \
  "status $status, location $location"

# --- sign-ins, by posting the provider's forms --------------------------------------------------
# signin JAR USER PASSWORD URL [OTP] [extra curl args]: requests URL and, while the answer is a
# provider page, fills it in (login form, one-time-code form). Sets $status/$body_file/$url.
signin() {
  local jar=$1 user=$2 password=$3 start=$4 otp=${5:-} action origin form
  shift 5
  local extra=("$@")
  fetch "signin-$user" -L -c "$jar" -b "$jar" -H 'Accept: text/html' "${extra[@]}" "$start"
  for _ in 1 2 3 4; do
    if grep -q 'id="login-form"' "$body_file"; then
      form="login-form"
    elif grep -q 'id="otp-form"' "$body_file"; then
      form="otp-form"
    else
      return 0
    fi
    action=$(grep -o "<form id=\"$form\"[^>]*action=\"[^\"]*\"" "$body_file" | head -n 1 |
      sed 's/.*action="\([^"]*\)".*/\1/; s/&amp;/\&/g')
    origin=$(sed -E 's#^(https?://[^/]+).*#\1#' <<<"$url")
    [[ $action == /* ]] && action="$origin$action"
    if [[ $form == login-form ]]; then
      fetch "signin-$user" -L -c "$jar" -b "$jar" -H 'Accept: text/html' "${extra[@]}" \
        --data-urlencode "username=$user" --data-urlencode "password=$password" "$action"
    else
      [[ -n $otp ]] || return 0
      fetch "signin-$user" -L -c "$jar" -b "$jar" -H 'Accept: text/html' "${extra[@]}" \
        --data-urlencode "otp=$otp" "$action"
    fi
  done
}

if [[ $signin == 1 ]]; then
  jar="$work/alice.jar"
  signin "$jar" alice alice-password "$base/headers" ""
  check "alice signs in and lands on /headers, served by the app through the connector" \
    "$([[ $status == 200 && $url == "$base/headers" ]] && grep -q '"headers"' "$body_file"; echo $?)" \
    "status $status at $url: $(head -c 300 "$body_file")"
  fetch alice_headers -b "$jar" -H 'X-Forwarded-User: mallory' -H 'X-Forwarded_User: mallory' \
    -H 'x-forwarded-email: mallory@example.com' -H 'X-Portcullis-Identity: mallory' "$base/headers"
  check "the app sees X-Forwarded-User u-alice" \
    "$(grep -q '"x-forwarded-user": "u-alice"' "$body_file"; echo $?)" "$(head -c 400 "$body_file")"
  check "the app sees alice's email and groups" \
    "$(grep -q '"x-forwarded-email": "alice@example.com"' "$body_file" &&
       grep -q '"x-forwarded-groups": "staff' "$body_file"; echo $?)" "$(head -c 400 "$body_file")"
  check "spoofed identity headers never reach the app (in any spelling)" \
    "$([[ $status == 200 ]] && ! grep -qi 'mallory' "$body_file"; echo $?)" \
    "status $status: $(grep -i mallory "$body_file" | head -n 3)"
  check "the session cookie never reaches the app" \
    "$([[ $status == 200 ]] && ! grep -q '__Host-portcullis\|"portcullis' "$body_file"; echo $?)" \
    "status $status: $(grep -i portcullis "$body_file" | head -n 3)"
  check "app responses carry X-Robots-Tag: noindex, nofollow" \
    "$([[ $(header x-robots-tag) == 'noindex, nofollow' ]]; echo $?)" "$(header x-robots-tag)"
  fetch alice_me -b "$jar" "$base/.auth/me"
  check "/.auth/me shows alice's identity" \
    "$([[ $status == 200 ]] && grep -q 'u-alice' "$body_file"; echo $?)" "status $status: $(head -c 300 "$body_file")"

  fetch robots_admin "$admin_base/robots.txt"
  check "robots.txt is served on $admin_base too" \
    "$([[ $status == 200 && $(cat "$body_file"; printf x) == "${expected}x" ]]; echo $?)" "status $status"
  # The MFA app: alice has no second factor, so the step-up fails with mfa_required.
  signin "$jar" alice alice-password "$admin_base/admin" ""
  check "alice on $admin_host/admin is stepped up, cannot do MFA, and is denied mfa_required" \
    "$([[ $status == 403 ]] && grep -q 'mfa_required' "$body_file"; echo $?)" \
    "status $status at $url: $(head -c 300 "$body_file")"
  # erin signs in with a password, then the step-up asks her provider for the one-time code.
  jar="$work/erin.jar"
  signin "$jar" erin erin-password "$admin_base/" ""
  check "erin signs in to $admin_host with a password" \
    "$([[ $status == 200 && $url == "$admin_base/" ]]; echo $?)" "status $status at $url"
  signin "$jar" erin erin-password "$admin_base/admin" 123456
  check "erin is stepped up on /admin (one-time code) and reaches the admin app" \
    "$([[ $status == 200 && $url == "$admin_base/admin" ]] && grep -q 'Portcullis admin app' "$body_file"; echo $?)" \
    "status $status at $url: $(head -c 300 "$body_file")"
  # dave is assigned to nothing.
  jar="$work/dave.jar"
  signin "$jar" dave dave-password "$admin_base/" ""
  check "dave is denied on $admin_host (not_assigned)" \
    "$([[ $status == 403 ]] && grep -q 'not_assigned' "$body_file"; echo $?)" \
    "status $status at $url: $(head -c 300 "$body_file")"
fi

printf '%d passed, %d failed\n' "$passed" "$failed"
[[ $failed == 0 ]]
