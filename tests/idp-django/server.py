#!/usr/bin/env python3
"""The second OpenID provider of the test suite: django-oauth-toolkit, a real OpenID Connect
provider (authorization code with PKCE, discovery, JWKS, RS256 ID tokens, userinfo, RP-initiated
logout), run as a Django site configured in this one file. Not oidc-provider, not written by us:
every protocol decision (request validation, PKCE, token issuance, signing, logout) is the
toolkit's; this file only configures it, loads the users and clients, and serves it.

    .tools/venv/bin/python tests/idp-django/server.py --port 0 --config CLIENTS.json [--quiet]

- users: tests/idp/users.json (the same names and passwords as the first provider; passwords are
  hashed by Django on load); the subject (`sub`) is the toolkit's default, the user's database id;
- clients: {"clients": [{"client_id", "client_secret", "redirect_uris", "post_logout_redirect_uris"}]}
  (the format of tests/idp), registered as confidential authorization-code clients with RS256 ID
  tokens and no consent page (first-party apps);
- the issuer is http://HOST:PORT/o (discovery at /o/.well-known/openid-configuration);
- prints `READY <issuer>` on stdout once it serves; state (SQLite, key) lives in a temporary
  directory removed on exit unless --state-dir is given.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--issuer", help="default http://HOST:PORT/o")
    ap.add_argument("--config", required=True, help="the clients file (JSON)")
    ap.add_argument("--users", default=os.path.join(ROOT, "tests/idp/users.json"))
    ap.add_argument("--state-dir", help="SQLite database and signing key; default a temporary directory")
    ap.add_argument("--quiet", action="store_true", help="no request log")
    return ap.parse_args()


def signing_key(path):
    """The RSA key the ID tokens are signed with (RS256), made once per state directory."""
    if os.path.exists(path):
        with open(path, encoding="ascii") as f:
            return f.read()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(pem)
    return pem


def configure(args, issuer, state):
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY=secrets.token_urlsafe(48),
        ALLOWED_HOSTS=[args.host, "127.0.0.1", "localhost"],
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "oauth2_provider",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        ROOT_URLCONF=__name__,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": os.path.join(state, "op.sqlite3")}},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "DIRS": [os.path.join(HERE, "templates")], "APP_DIRS": True,
                    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]}}],
        STATIC_URL="/static/",
        USE_TZ=True,
        LOGIN_URL="/accounts/login/",
        # Browsers keep cookies per host, not per port: names of our own, so the app behind
        # Portcullis on the same host never mistakes them for its own.
        SESSION_COOKIE_NAME="dot_op_session",
        CSRF_COOKIE_NAME="dot_op_csrf",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING={"version": 1, "disable_existing_loggers": False,
                 "handlers": {"stderr": {"class": "logging.StreamHandler"}},
                 "loggers": {"django.server": {"handlers": ["stderr"],
                                               "level": "ERROR" if args.quiet else "INFO",
                                               "propagate": False},
                             "oauth2_provider": {"handlers": ["stderr"], "level": "WARNING"}}},
        OAUTH2_PROVIDER={
            "OIDC_ENABLED": True,
            "OIDC_ISS_ENDPOINT": issuer,
            "OIDC_RSA_PRIVATE_KEY": signing_key(os.path.join(state, "signing-key.pem")),
            "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
            "PKCE_REQUIRED": True,
            # RFC 9700: S256 only (no "plain").
            "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
            "SCOPES": {"openid": "OpenID Connect", "profile": "Your profile", "email": "Your email"},
            "OAUTH2_VALIDATOR_CLASS": f"{__name__}.ClaimsValidator",
            "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
        },
    )
    django.setup()

    from django.contrib.auth.views import LoginView
    from django.http import HttpResponse
    from django.urls import include, path
    from oauth2_provider.oauth2_validators import OAuth2Validator

    class ClaimsValidator(OAuth2Validator):
        """The toolkit's validator, with the standard profile and email claims and groups
        (the toolkit's documented extension point: get_additional_claims)."""

        oidc_claim_scope = dict(OAuth2Validator.oidc_claim_scope, groups="profile")

        def get_additional_claims(self, request):
            user = request.user
            return {
                "preferred_username": user.username,
                "name": user.get_full_name(),
                "email": user.email,
                "email_verified": True,
                "groups": [g.name for g in user.groups.order_by("name")],
            }

    def healthz(_request):
        return HttpResponse("ok\n", content_type="text/plain")

    module = sys.modules[__name__]
    module.ClaimsValidator = ClaimsValidator
    module.urlpatterns = [
        path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
        path("accounts/login/", LoginView.as_view(), name="login"),
        path("healthz", healthz),
    ]


def load(users_file, clients_file):
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from oauth2_provider.models import Application

    call_command("migrate", verbosity=0, interactive=False)
    with open(users_file, encoding="utf-8") as f:
        users = json.load(f)["users"]
    for u in users:
        first, _, last = (u.get("name") or "").partition(" ")
        user, _ = User.objects.get_or_create(username=u["username"])
        user.first_name, user.last_name, user.email = first, last, u.get("email", "")
        user.set_password(u["password"])
        user.save()
        user.groups.set([Group.objects.get_or_create(name=g)[0] for g in u.get("groups", [])])
    with open(clients_file, encoding="utf-8") as f:
        clients = json.load(f)["clients"]
    for c in clients:
        Application.objects.filter(client_id=c["client_id"]).delete()
        Application.objects.create(
            name=c["client_id"],
            client_id=c["client_id"],
            client_secret=c["client_secret"],
            client_type=Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            redirect_uris=" ".join(c.get("redirect_uris", [])),
            post_logout_redirect_uris=" ".join(c.get("post_logout_redirect_uris", [])),
            algorithm=Application.RS256_ALGORITHM,
            skip_authorization=True,
        )


def main():
    args = parse_args()
    state = args.state_dir or tempfile.mkdtemp(prefix="portcullis-idp-django-")
    os.makedirs(state, exist_ok=True)
    try:
        # Bind first, so that the issuer can name the port (0 = a free one).
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

        server = ThreadedWSGIServer((args.host, args.port), WSGIRequestHandler)
        server.daemon_threads = True
        port = server.server_address[1]
        issuer = args.issuer or f"http://{args.host}:{port}/o"
        configure(args, issuer, state)
        load(args.users, args.config)

        from django.core.wsgi import get_wsgi_application

        server.set_app(get_wsgi_application())

        def stop(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        print(f"READY {issuer}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        if not args.state_dir:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
