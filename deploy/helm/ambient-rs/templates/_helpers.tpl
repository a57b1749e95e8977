{{/* Chart name and version, as in the helm.sh/chart label. */}}
{{- define "ambient-rs.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "ambient-rs.labels" -}}
helm.sh/chart: {{ include "ambient-rs.chart" . }}
app.kubernetes.io/part-of: ambient-rs
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* The image tag: global.tag, else the chart's appVersion. */}}
{{- define "ambient-rs.tag" -}}
{{ .Values.global.tag | default .Chart.AppVersion }}
{{- end }}

{{/* image: "<image name under global.hub>" */}}
{{- define "ambient-rs.image" -}}
{{ .root.Values.global.hub }}/{{ .image }}:{{ include "ambient-rs.tag" .root }}
{{- end }}

{{/* Mesh root namespace: meshConfig.rootNamespace, else the release namespace (Istio's rule). */}}
{{- define "ambient-rs.rootNamespace" -}}
{{ .Values.meshConfig.rootNamespace | default .Release.Namespace }}
{{- end }}

{{/* istiod-lite's delta ADS + CA endpoint over TLS. Its serving certificate names
     istiod.istio-system.svc, so the Service is called istiod, as Istio's is. */}}
{{- define "ambient-rs.istiodAddress" -}}
https://istiod.{{ .Release.Namespace }}.svc:15012
{{- end }}

{{/* Host directory of ztunnel's enrollment socket (cni.sock), shared with ambient-cni. */}}
{{- define "ambient-rs.cniSocketDir" -}}
/var/run/ambient-rs
{{- end }}
