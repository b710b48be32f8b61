# The demo OpenID provider (tests/idp: oidc-provider with the demo users) and its admin-token
# helper. Demo only: plain HTTP, published passwords, a fixed one-time code.
#
#   docker build -f docker/idp.Dockerfile -t portcullis/idp .
#   docker run -p 127.0.0.1:9000:9000 portcullis/idp
#
# The issuer is the URL the browser uses (http://127.0.0.1:9000 through the published port);
# containers reach the provider as http://idp:9000 and name the issuer's host in their requests.
FROM node:20-slim
ENV NODE_ENV=production
WORKDIR /opt/portcullis-idp
COPY tests/idp/package.json tests/idp/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error
COPY tests/idp/ ./
COPY docker/admin-token.sh /usr/local/bin/portcullis-admin-token
# The admin token is handed to the connector registration through a volume mounted here.
RUN mkdir -p /var/lib/portcullis/token && chown node:node /var/lib/portcullis/token
USER node
EXPOSE 9000
ENTRYPOINT ["node", "server.mjs"]
CMD ["--host", "0.0.0.0", "--port", "9000", "--issuer", "http://127.0.0.1:9000", "--config", "clients.demo.json"]
