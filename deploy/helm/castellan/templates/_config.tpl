{{/*
castellan.toml, from the values: the user writes values only. Strings are
written with toJson (a JSON string is a TOML basic string), numbers with
int (values arrive as floats).
*/}}
{{- define "castellan.config" -}}
{{- $v := .Values -}}
{{- $ns := .Release.Namespace -}}
# castellan.toml rendered by the castellan Helm chart {{ .Chart.Version }}
# (signer.type {{ $v.signer.type }}); docs/configuration.md explains each key.
trust_domain = {{ $v.trustDomain | toJson }}

[server]
listen = "0.0.0.0:15012"
metrics_listen = "0.0.0.0:15014"
shutdown_grace_secs = {{ int $v.shutdownGraceSecs }}

[server.tls]
{{- if eq $v.signer.type "vault-pki" }}
cert_file = "/etc/castellan/tls/tls.crt"
key_file = "/etc/castellan/tls/tls.key"
{{- else }}
dns_names = {{ list (printf "castellan.%s.svc" $ns) (printf "castellan.%s.svc.cluster.local" $ns) | toJson }}
{{- end }}

[issuance]
default_ttl_secs = {{ int $v.issuance.defaultTtlSecs }}
max_ttl_secs = {{ int $v.issuance.maxTtlSecs }}

[ca]
roots_file = "/etc/castellan/roots/root-cert.pem"
{{- if eq $v.signer.type "vault-pki" }}
reload_interval_secs = {{ int $v.signer.vault.pki.reloadIntervalSecs }}
{{- end }}

[signer]
{{- if eq $v.signer.type "file" }}
type = "file"
dir = "/etc/castellan/ca"
{{- else if eq $v.signer.type "pkcs11" }}
{{- $p := $v.signer.pkcs11 }}
type = "pkcs11"
module = {{ $p.module | toJson }}
token_label = {{ $p.tokenLabel | toJson }}
key_label = {{ $p.keyLabel | toJson }}
pin_file = "/etc/castellan/hsm/pin"
pool_size = {{ int $p.poolSize }}
{{- if $p.mint.enabled }}
cert_file = "/etc/castellan/ca/issuing-ca.pem"
chain_file = "/etc/castellan/ca/chain.pem"

[signer.mint]
ttl_secs = {{ int $p.mint.ttlSecs }}
key_type = {{ $p.mint.keyType | toJson }}
{{- else }}
cert_file = "/etc/castellan/ca/intermediate.pem"
chain_file = "/etc/castellan/ca/chain.pem"
{{- end }}
{{- else }}
{{- $vault := $v.signer.vault }}
type = "vault"
address = {{ $vault.address | toJson }}
ca_file = "/etc/castellan/vault/ca.crt"
timeout_secs = {{ int $vault.timeoutSecs }}

[signer.auth]
method = "kubernetes"
role = {{ $vault.authRole | toJson }}
jwt_file = "/var/run/secrets/tokens/vault-token"
{{- if eq $v.signer.type "vault-pki" }}

[signer.pki]
mount = {{ $vault.pki.mount | toJson }}
role = {{ $vault.pki.role | toJson }}
{{- else if eq $v.signer.type "vault-transit" }}

[signer.transit]
mount = {{ $vault.transit.mount | toJson }}
key = {{ $vault.transit.key | toJson }}
cert_file = "/etc/castellan/ca/intermediate.pem"
chain_file = "/etc/castellan/ca/chain.pem"
{{- else }}

[signer.mint]
mount = {{ $vault.mint.mount | toJson }}
{{- with $vault.mint.issuer }}
issuer = {{ . | toJson }}
{{- end }}
ttl_secs = {{ int $vault.mint.ttlSecs }}
key_type = {{ $vault.mint.keyType | toJson }}
{{- if eq $vault.mint.keyStore "pkcs11" }}
{{- $p := $v.signer.pkcs11 }}

[signer.mint.pkcs11]
module = {{ $p.module | toJson }}
token_label = {{ $p.tokenLabel | toJson }}
pin_file = "/etc/castellan/hsm/pin"
pool_size = {{ int $p.poolSize }}
label_prefix = {{ $vault.mint.labelPrefix | toJson }}
{{- end }}
{{- end }}
{{- end }}

[[authn]]
type = "tokenreview"
cluster_id = {{ $v.clusterId | toJson }}
audiences = {{ $v.tokenAudiences | toJson }}
{{- range $v.remoteClusters }}

[[authn]]
type = "tokenreview"
cluster_id = {{ .clusterId | toJson }}
kubeconfig = {{ printf "/etc/castellan/clusters/%s/kubeconfig" .clusterId | toJson }}
audiences = {{ $v.tokenAudiences | toJson }}
{{- end }}
{{- if $v.ambient.enabled }}

[impersonation]
trusted_node_accounts = {{ $v.ambient.trustedNodeAccounts | toJson }}
max_staleness_secs = {{ int $v.ambient.maxStalenessSecs }}
{{- end }}

[log]
format = {{ $v.log.format | toJson }}

[kubernetes]
{{- if $v.trustBundle.enabled }}

[kubernetes.trust_bundle]
configmap_name = {{ $v.trustBundle.configMapName | toJson }}
{{- if $v.trustBundle.clusterTrustBundle }}
cluster_trust_bundle = true
{{- end }}
{{- end }}
{{- if include "castellan.istiodCert" . }}

[kubernetes.istiod_cert]
namespace = {{ $v.istiodCert.namespace | toJson }}
secret_name = {{ $v.istiodCert.secretName | toJson }}
{{- end }}

[trust]
state_configmap = {{ $v.trust.stateConfigMap | toJson }}
{{- if $v.crl.enabled }}

[trust.crl]
validity_secs = {{ int $v.crl.validitySecs }}
configmap_name = {{ $v.crl.configMapName | toJson }}
upstream_files = [{{ range $i, $f := $v.crl.upstreamFiles }}{{ if $i }}, {{ end }}{{ printf "/etc/castellan/crls/%s" $f | toJson }}{{ end }}]
{{- end }}
{{- with $v.extraConfig }}

# extraConfig
{{ . }}
{{- end }}
{{- end -}}
