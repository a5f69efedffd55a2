{{- /*
The alerting rules of every enabled controller, as Prometheus rule groups (the `spec.groups` of the
PrometheusRule in prometheusrule.yaml). Tested with `promtool check rules` and `promtool test rules` by
e2e/tests/chart_prometheus.rs; docs/observability.md "Alerts" explains each one.
*/ -}}
{{- define "ferrite.ruleGroups" -}}
{{- $r := .Values.prometheus.rules -}}
{{- $ingress := (.Values.ingress | default dict).enabled -}}
{{- /* ferrite-dns's reconciles are zone syncs and embedded-zone passes; its failures alert through
     the provider alerts (ferrite_dns_provider_errors_total), not this group. ferrite-ingress counts its
     snapshot builds (kind Ingress) and status writes (kind IngressStatus) as reconciles. */ -}}
{{- if or .Values.loadbalancer.enabled .Values.certs.enabled $ingress }}
- name: ferrite-reconcile
  rules:
    {{- range $c := list "lb" "certs" "ingress" }}
    {{- if or (and (eq $c "lb") $.Values.loadbalancer.enabled) (and (eq $c "certs") $.Values.certs.enabled) (and (eq $c "ingress") $ingress) }}
    # More than reconcileErrorRatio of one kind's reconciles fail (skipped ones, on standbys, not counted).
    - alert: FerriteReconcileErrors
      expr: |
        sum by (kind) (rate(ferrite_{{ $c }}_reconcile_total{result="error"}[15m]))
          / sum by (kind) (rate(ferrite_{{ $c }}_reconcile_total{result=~"success|error"}[15m]))
          > {{ $r.reconcileErrorRatio }}
      for: {{ $r.reconcileErrorsFor }}
      labels:
        severity: warning
        controller: ferrite-{{ $c }}
      annotations:
        summary: {{ printf "ferrite-%s: reconciles of {{ $labels.kind }} keep failing" $c | quote }}
        description: {{ printf "{{ $value | humanizePercentage }} of ferrite-%s's {{ $labels.kind }} reconciles failed over 15 minutes. The reason is in ferrite_%s_reconcile_errors_total{kind=\"{{ $labels.kind }}\"} and in the objects' Warning Events." $c $c | quote }}
    {{- end }}
    {{- end }}
{{- end }}
{{- if .Values.loadbalancer.enabled }}
- name: ferrite-lb
  rules:
    # The allocator (its leader) holds more addresses than the speakers announce: some assigned IP is
    # answered by no node. Services without a ready endpoint are not announced either (as MetalLB), so a
    # scaled-to-zero Service also counts until its endpoints return.
    - alert: FerriteSpeakerNotAnnouncing
      expr: |
        max(sum by (instance) (ferrite_lb_pool_addresses_in_use))
          > (count(count by (ip) (ferrite_lb_announced == 1)) or vector(0))
      for: {{ $r.speakerNotAnnouncingFor }}
      labels:
        severity: critical
        controller: ferrite-lb
      annotations:
        summary: "ferrite-lb: assigned LoadBalancer addresses that no speaker announces"
        description: "Services hold more pool addresses than the speakers announce (ferrite_lb_pool_addresses_in_use vs ferrite_lb_announced) for {{ $r.speakerNotAnnouncingFor }}: those addresses get no ARP/NDP answer. Check that a speaker runs on a node with a ready endpoint (kubectl get ds ferrite-lb-speaker) and its logs."
    # Services keep addresses that are in no IPPool any more.
    - alert: FerriteAddressesOutOfPool
      expr: max(ferrite_lb_addresses_out_of_pool) > 0
      for: 1h
      labels:
        severity: info
        controller: ferrite-lb
      annotations:
        summary: "ferrite-lb: Services hold addresses outside every IPPool"
        description: "{{ `{{ $value }}` }} addresses are held by Services but belong to no IPPool (kept until the Service lets go; docs/loadbalancer.md)."
{{- end }}
{{- if .Values.dns.enabled }}
- name: ferrite-dns
  rules:
    # RFC2136: the server does not answer (connection refused, no route, timeout).
    - alert: FerriteDNSProviderUnreachable
      expr: |
        sum by (zone) (increase(ferrite_dns_provider_errors_total{reason=~"Unreachable|Timeout"}[10m])) > 0
      for: {{ $r.dnsProviderUnreachableFor }}
      labels:
        severity: critical
        controller: ferrite-dns
      annotations:
        summary: "ferrite-dns: the DNS server of zone {{ `{{ $labels.zone }}` }} is unreachable"
        description: "Syncs of DNSZone {{ `{{ $labels.zone }}` }} fail with Unreachable or Timeout: record changes are not published. Check the server address of the zone's spec.provider.rfc2136 and the network path to it."
    # RFC2136: the server answers but refuses (TSIG key, policy, zone not served).
    - alert: FerriteDNSProviderRefusing
      expr: |
        sum by (zone, reason) (increase(ferrite_dns_provider_errors_total{reason=~"Refused|NotAuth"}[10m])) > 0
      for: {{ $r.dnsProviderUnreachableFor }}
      labels:
        severity: warning
        controller: ferrite-dns
      annotations:
        summary: "ferrite-dns: the DNS server of zone {{ `{{ $labels.zone }}` }} refuses updates ({{ `{{ $labels.reason }}` }})"
        description: "Syncs of DNSZone {{ `{{ $labels.zone }}` }} fail with {{ `{{ $labels.reason }}` }}: check the TSIG key and the server's update policy."
{{- end }}
{{- if .Values.certs.enabled }}
- name: ferrite-certs
  rules:
    - alert: FerriteCertificateExpiringSoon
      expr: |
        min by (namespace, name) (ferrite_certs_certificate_expiration_timestamp_seconds) - time()
          < {{ $r.certificateExpiryDays }} * 86400
      for: 1h
      labels:
        severity: warning
        controller: ferrite-certs
      annotations:
        summary: "Certificate {{ `{{ $labels.namespace }}/{{ $labels.name }}` }} expires in less than {{ $r.certificateExpiryDays }} days"
        description: "The certificate in the Secret of Certificate {{ `{{ $labels.namespace }}/{{ $labels.name }}` }} expires in {{ `{{ $value | humanizeDuration }}` }} and was not renewed (renewal is at 2/3 of the lifetime). kubectl describe certificate shows why."
    - alert: FerriteCertificateExpired
      expr: |
        min by (namespace, name) (ferrite_certs_certificate_expiration_timestamp_seconds) - time() <= 0
      labels:
        severity: critical
        controller: ferrite-certs
      annotations:
        summary: "Certificate {{ `{{ $labels.namespace }}/{{ $labels.name }}` }} has expired"
        description: "The certificate in the Secret of Certificate {{ `{{ $labels.namespace }}/{{ $labels.name }}` }} is past its notAfter: clients refuse it."
    - alert: FerriteCertificateNotReady
      expr: |
        max by (namespace, name) (ferrite_certs_certificate_ready_status{condition="False"}) == 1
      for: {{ $r.certificateNotReadyFor }}
      labels:
        severity: warning
        controller: ferrite-certs
      annotations:
        summary: "Certificate {{ `{{ $labels.namespace }}/{{ $labels.name }}` }} is not Ready"
        description: "Certificate {{ `{{ $labels.namespace }}/{{ $labels.name }}` }} has had Ready=False for {{ $r.certificateNotReadyFor }}; its status and Events say why."
{{- end }}
{{- if $ingress }}
- name: ferrite-ingress
  rules:
    # Only over a minimum request rate, so a handful of errors on an idle Ingress does not page.
    - alert: FerriteIngressHigh5xxRatio
      expr: |
        sum by (namespace, ingress) (rate(ferrite_ingress_requests_total{code="5xx"}[5m]))
          / sum by (namespace, ingress) (rate(ferrite_ingress_requests_total[5m]))
          > {{ $r.ingress5xxRatio }}
        and sum by (namespace, ingress) (rate(ferrite_ingress_requests_total[5m])) > {{ $r.ingress5xxMinRate }}
      for: {{ $r.ingress5xxFor }}
      labels:
        severity: warning
        controller: ferrite-ingress
      annotations:
        summary: "Ingress {{ `{{ $labels.namespace }}/{{ $labels.ingress }}` }}: {{ `{{ $value | humanizePercentage }}` }} of responses are 5xx"
        description: "More than {{ $r.ingress5xxRatio }} of the responses ferrite-ingress served for Ingress {{ `{{ $labels.namespace }}/{{ $labels.ingress }}` }} over 5 minutes were 5xx (backend errors, 502 on connect failures, 504 on timeouts): see ferrite_ingress_upstream_connect_errors_total and the access log."
{{- end }}
{{- end -}}
