# One Portcullis filter as an OCI image, the format Istio's WasmPlugin (url: oci://…) and Envoy
# Gateway's EnvoyExtensionPolicy (code.type: Image) pull: a single layer holding plugin.wasm.
# The build context is the directory of the release modules (after `make build`):
#
#   for f in robots preauth conditional_access cookie; do
#     docker build -f docker/wasm-plugin.Dockerfile --build-arg FILTER=$f \
#       -t registry.example.com/portcullis/${f//_/-}:0.1.0 target/wasm32-wasip1/release
#     docker push registry.example.com/portcullis/${f//_/-}:0.1.0
#   done
#
# The all-in-one module (portcullis.wasm): --build-arg MODULE=portcullis, tagged
# registry.example.com/portcullis/all-in-one:0.1.0.
FROM scratch
ARG FILTER
ARG MODULE=portcullis_${FILTER}
COPY ${MODULE}.wasm ./plugin.wasm
