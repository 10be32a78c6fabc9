{{/*
Names are castellan's own, as in deploy/kubernetes: the Service name is in
castellan's serving certificate and in Istio's caAddress, the Lease and the
trust record are named in castellan.toml, and castellan is the one CA of a
cluster. The namespace is the release's.
*/}}

{{/* Labels on every object. */}}
{{- define "castellan.labels" -}}
app.kubernetes.io/name: {{ .name | default "castellan" }}
app.kubernetes.io/part-of: istio
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "castellan.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The signer types whose key is in a PKCS#11 token. */}}
{{- define "castellan.hsm" -}}
{{- if or (eq .Values.signer.type "pkcs11") (and (eq .Values.signer.type "vault-mint") (eq .Values.signer.vault.mint.keyStore "pkcs11")) -}}
true
{{- end -}}
{{- end -}}

{{- define "castellan.vault" -}}
{{- if hasPrefix "vault-" .Values.signer.type -}}
true
{{- end -}}
{{- end -}}

{{/* istiod's certificate: on unless asked otherwise, never with vault-pki. */}}
{{- define "castellan.istiodCert" -}}
{{- $on := .Values.istiodCert.enabled -}}
{{- if kindIs "invalid" $on -}}
{{- $on = ne .Values.signer.type "vault-pki" -}}
{{- end -}}
{{- if and $on (eq .Values.signer.type "vault-pki") -}}
{{- fail "istiodCert.enabled: signer.type vault-pki cannot sign istiod's certificate (the Vault role issues SPIFFE certificates only); set istiodCert.enabled=false and provide Secret istiod-tls from elsewhere" -}}
{{- end -}}
{{- if $on -}}
true
{{- end -}}
{{- end -}}

{{/* The projected API token castellan's pods mount. */}}
{{- define "castellan.kubeApiAccess" -}}
- name: kube-api-access
  projected:
    defaultMode: 292 # 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- end -}}

{{- define "castellan.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* A ServiceAccount subject: castellan's. */}}
{{- define "castellan.subject" -}}
subjects:
  - kind: ServiceAccount
    name: castellan
    namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* Checks no schema can express. */}}
{{- define "castellan.validate" -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.shutdownGraceSecs) -}}
{{- fail "terminationGracePeriodSeconds must exceed shutdownGraceSecs: SIGKILL would cut requests in flight" -}}
{{- end -}}
{{- if lt (int .Values.issuance.maxTtlSecs) (int .Values.issuance.defaultTtlSecs) -}}
{{- fail "issuance.maxTtlSecs must be at least issuance.defaultTtlSecs" -}}
{{- end -}}
{{- end -}}
