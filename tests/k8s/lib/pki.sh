# The cluster's PKI, made fresh by every `up` with openssl. Sourced by cluster.sh and node2.sh.
# shellcheck shell=bash
#
# P-256 keys everywhere (the service-account key too: the apiserver signs tokens with ES256):
# they are generated in milliseconds where RSA keys took seconds on this 2-core machine.

pki_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# pki_cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES] [DIR]: NAME.key and NAME.crt in
# DIR (default $PKI), signed by the cluster's CA in $PKI. node2.sh signs node-2's with it too.
pki_cert() {
    local name=$1 subject=$2 eku=$3 san=${4:-} out=${5:-$PKI}
    pki_key "$out/$name.key"
    openssl req -new -key "$out/$name.key" -subj "$subject" -out "$out/$name.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
    } >"$out/$name.ext"
    openssl x509 -req -in "$out/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -set_serial "0x$(openssl rand -hex 12)" -days 30 -extfile "$out/$name.ext" \
        -out "$out/$name.crt" 2>/dev/null
    rm -f "$out/$name.csr" "$out/$name.ext"
}

# pki_kubeconfig USER: a kubeconfig with everything embedded, so it still works when copied.
pki_kubeconfig() {
    local user=$1
    cat >"$PKI/$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pvdir-k8s
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$user.crt")
    client-key-data: $(base64 -w0 "$PKI/$user.key")
contexts:
- name: pvdir-k8s
  context:
    cluster: pvdir-k8s
    user: $user
current-context: pvdir-k8s
EOF
}

pki_make() {
    rm -rf "$PKI"
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    pki_key "$PKI/ca.key"
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=pvdir-k8s-ca" -days 30 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$PKI/ca.crt"

    pki_cert apiserver "/CN=kube-apiserver" serverAuth \
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP"
    pki_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    pki_cert kubelet-serving "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP,IP:127.0.0.1"

    pki_cert admin "/O=system:masters/CN=kubernetes-admin" clientAuth
    pki_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
    pki_cert scheduler "/CN=system:kube-scheduler" clientAuth
    pki_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    local u
    for u in admin controller-manager scheduler kubelet; do pki_kubeconfig "$u"; done

    pki_key "$PKI/sa.key"
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
}
