{{- define "ferrite-lb.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- define "ferrite-lb.labels" -}}
app.kubernetes.io/part-of: ferrite
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- /* The gossip Secret's name: the existing Secret given, or the one the chart makes from gossipKey.
     Fails the render when neither or both are set (docs/loadbalancer.md, "Gossip key"). */ -}}
{{- define "ferrite-lb.gossipSecret" -}}
{{- $s := .Values.speaker -}}
{{- if and $s.gossipSecret $s.gossipKey -}}
{{- fail "loadbalancer.speaker: set either gossipSecret (an existing Secret) or gossipKey, not both" -}}
{{- else if $s.gossipSecret -}}
{{ $s.gossipSecret }}
{{- else if $s.gossipKey -}}
{{- if lt (len $s.gossipKey) 16 -}}
{{- fail "loadbalancer.speaker.gossipKey is shorter than 16 characters: use e.g. $(openssl rand -hex 32)" -}}
{{- end -}}
ferrite-lb-gossip
{{- else -}}
ferrite-lb-gossip
{{- end -}}
{{- end -}}

{{/* True when the chart renders no gossip Secret and names none: the controller creates it. */}}
{{- define "ferrite-lb.controllerMakesGossipSecret" -}}
{{- if and (not .Values.speaker.gossipSecret) (not .Values.speaker.gossipKey) -}}true{{- end -}}
{{- end -}}
