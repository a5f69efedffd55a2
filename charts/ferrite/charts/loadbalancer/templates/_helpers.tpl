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
{{- fail "loadbalancer.speaker needs a gossip key that is the same on every render: create the Secret once with `kubectl -n <namespace> create secret generic ferrite-lb-gossip --from-literal=key=$(openssl rand -hex 32)` and set loadbalancer.speaker.gossipSecret=ferrite-lb-gossip, or set loadbalancer.speaker.gossipKey" -}}
{{- end -}}
{{- end -}}
