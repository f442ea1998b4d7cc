{{/*
The objects carry only these labels, no Helm bookkeeping labels, so that the default render
matches the plain manifests in deploy/ exactly.
*/}}
{{- define "pvdir.labels" -}}
app.kubernetes.io/name: pvdir
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* The driver image; the tag defaults to the chart's appVersion. */}}
{{- define "pvdir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* A sidecar image from one entry of .Values.sidecars. */}}
{{- define "pvdir.sidecarImage" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* Sidecars talk to a root-owned socket and the API server; they need nothing more. */}}
{{- define "pvdir.sidecarSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Flags every `pvdir serve` gets. */}}
{{- define "pvdir.commonArgs" -}}
- --nfs-timeout-secs={{ .Values.nfsTimeoutSecs }}
- --log-format={{ .Values.logFormat }}
{{- with .Values.logFilter }}
- --log={{ . }}
{{- end }}
{{- end }}

{{/* Scrape annotations for a pod whose pvdir serves /metrics on `port`, if asked for. */}}
{{- define "pvdir.scrapeAnnotations" -}}
{{- if and .root.Values.metrics.podAnnotations (not .root.Values.standardSidecars) }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ .port | quote }}
  prometheus.io/path: /metrics
{{- end }}
{{- end }}
