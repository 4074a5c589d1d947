{{/* Names: <release>-control-plane, <release>-gateway, ... when the release name says ccr, else <release>-ccr-... */}}
{{- define "ccr.fullname" -}}
{{- if contains "ccr" .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- else -}}{{ printf "%s-ccr" .Release.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "ccr.labels" -}}
app.kubernetes.io/part-of: ccr-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one component: (list $ "control-plane") */}}
{{- define "ccr.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "ccr.fullname" $ }}-{{ index . 1 }}
app.kubernetes.io/instance: {{ $.Release.Name }}
{{- end -}}

{{- define "ccr.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ required "image.tag is required (never latest)" .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "ccr.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "ccr.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* zone and host spread of one component: (list $ "gateway") */}}
{{- define "ccr.spread" -}}
{{- $ := index . 0 -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: {{ $.Values.topologySpread.zone }}
  labelSelector:
    matchLabels:
      {{- include "ccr.selector" . | nindent 6 }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "ccr.selector" . | nindent 6 }}
{{- end -}}

{{/* A password from a Secret as an environment variable, for $(VAR) expansion in a URL after it. */}}
{{- define "ccr.passwordEnv" -}}
{{- $name := index . 0 -}}{{- $ref := index . 1 -}}
{{- if $ref.name }}
- name: {{ $name }}
  valueFrom: {secretKeyRef: {name: {{ $ref.name }}, key: {{ $ref.key }}}}
{{- end }}
{{- end -}}

{{- define "ccr.postgresDsn" -}}
{{- $p := .Values.postgres -}}
postgresql://{{ $p.user }}{{ if $p.passwordSecret.name }}:$(CCR_POSTGRES_PASSWORD){{ end }}@{{ $p.host }}:{{ $p.port }}/{{ $p.database }}?sslmode={{ $p.sslmode }}
{{- end -}}

{{- define "ccr.amqpUrl" -}}
{{- $r := .Values.rabbitmq -}}
amqp://{{ $r.user }}{{ if $r.passwordSecret.name }}:$(CCR_RABBITMQ_PASSWORD){{ end }}@{{ $r.host }}:{{ $r.port }}/{{ $r.vhost | urlquery }}
{{- end -}}

{{/* The Redis URL for one database: (list $ db). sentinel and cluster are the forms of extproc/auth/redis_topology.py. */}}
{{- define "ccr.redisUrl" -}}
{{- $ := index . 0 -}}{{- $db := index . 1 -}}
{{- $r := $.Values.redis -}}
{{- $auth := ternary ":$(CCR_REDIS_PASSWORD)@" "" (ne $r.passwordSecret.name "") -}}
{{- if eq $r.mode "standalone" -}}
redis://{{ $auth }}{{ $r.standalone.host }}:{{ $r.standalone.port }}/{{ $db }}
{{- else if eq $r.mode "sentinel" -}}
redis+sentinel://{{ $auth }}{{ join "," $r.sentinel.hosts }}/{{ $r.sentinel.master }}/{{ $db }}
{{- else if eq $r.mode "cluster" -}}
redis+cluster://{{ $auth }}{{ join "," $r.cluster.nodes }}
{{- else -}}
{{- fail (printf "redis.mode must be standalone, sentinel or cluster, not %q" $r.mode) -}}
{{- end -}}
{{- end -}}

{{/* The policy: .Values.policy, with tracing, vault and batches added when enabled. */}}
{{- define "ccr.policy" -}}
{{- $policy := deepCopy .Values.policy -}}
{{- if .Values.tracing.enabled -}}
{{- $_ := set $policy "tracing" (dict "otlp" .Values.tracing.otlp "sample" .Values.tracing.sample "service_name" .Values.tracing.serviceName) -}}
{{- end -}}
{{- if .Values.vault.enabled -}}
{{- $auth := dict "method" .Values.vault.authMethod -}}
{{- if eq .Values.vault.authMethod "kubernetes" -}}{{- $_ := set $auth "role" .Values.vault.kubernetesRole -}}{{- end -}}
{{- $_ := set $policy "vault" (dict "address" .Values.vault.address "auth" $auth "rotation" (dict "interval" .Values.vault.rotationInterval)) -}}
{{- end -}}
{{- if and .Values.batches.enabled (not (hasKey $policy "batches")) -}}
{{- $_ := set $policy "batches" (dict "api" (printf "%s-batch-api:9180" (include "ccr.fullname" .))) -}}
{{- end -}}
{{- toYaml $policy -}}
{{- end -}}

{{/* Does any pod need the service account token (Vault's kubernetes auth)? */}}
{{- define "ccr.automountToken" -}}
{{- if and .Values.vault.enabled (eq .Values.vault.authMethod "kubernetes") -}}true{{- else -}}false{{- end -}}
{{- end -}}
