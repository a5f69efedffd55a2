{{- define "ferrite-lb.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- define "ferrite-lb.labels" -}}
app.kubernetes.io/part-of: ferrite
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "ferrite-lb.gossipSecret" -}}
{{ default "ferrite-lb-gossip" .Values.speaker.gossipSecret }}
{{- end -}}
