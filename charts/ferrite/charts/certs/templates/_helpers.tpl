{{- define "ferrite-certs.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- define "ferrite-certs.labels" -}}
app.kubernetes.io/part-of: ferrite
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "ferrite-certs.clusterResourceNamespace" -}}
{{ default .Release.Namespace .Values.clusterResourceNamespace }}
{{- end -}}
