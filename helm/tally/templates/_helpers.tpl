{{/* Names */}}
{{- define "tally.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tally.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tally.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tally.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tally.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tally.labels" -}}
helm.sh/chart: {{ include "tally.chart" . }}
{{ include "tally.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tally
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tally.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "tally.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tally.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tally.secretName" -}}
{{- default (include "tally.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
The workloads this release runs, as YAML {items: [...]}: in monolith mode one (`--target all`),
in microservices mode one per service target. Each item: key (values key), component (label and
name suffix), target (`tally serve --target`), name, values (its block of values), egress (which
outside networks its pods talk to: devices, cssm, webhooks).

Which target serves which routes: the services' routes() functions (their #[get(...)] etc.
attributes under services/<target>/src); /dna/... is catalyst-api's (services/catalyst-api).
scripts/k8s-check checks the Ingress against those sources.
*/}}
{{- define "tally.workloads" -}}
{{- $full := include "tally.fullname" . -}}
{{- $online := eq .Values.uplink.mode "online" -}}
items:
{{- if eq .Values.mode "monolith" }}
  - key: monolith
    component: all
    target: all
    name: {{ $full }}
    values: {{ toJson .Values.monolith }}
    egress: {devices: true, cssm: {{ $online }}, webhooks: true}
    paths: ["/api/v1", "/dna", "/docs", "/openapi.json"]
    autoscale: true
{{- else }}
  - key: inventory
    component: inventory
    target: inventory
    name: {{ $full }}-inventory
    values: {{ toJson .Values.services.inventory }}
    egress: {devices: false, cssm: false, webhooks: false}
    paths: ["/api/v1/devices", "/api/v1/sites"]
    autoscale: true
  - key: rumAggregator
    component: rum-aggregator
    target: rum-aggregator
    name: {{ $full }}-rum-aggregator
    values: {{ toJson .Values.services.rumAggregator }}
    egress: {devices: true, cssm: false, webhooks: false}
    paths: ["/api/v1/reports", "/api/v1/quarantine", "/api/v1/collections", "/api/v1/ack-imports", "/api/v1/collector"]
    autoscale: true
  - key: cssmUplink
    component: cssm-uplink
    target: cssm-uplink
    name: {{ $full }}-cssm-uplink
    values: {{ toJson .Values.services.cssmUplink }}
    egress: {devices: false, cssm: {{ $online }}, webhooks: false}
    paths: ["/api/v1/uplink"]
    autoscale: true
  - key: tierAssignment
    component: tier-assignment
    target: tier-assignment
    name: {{ $full }}-tier-assignment
    values: {{ toJson .Values.services.tierAssignment }}
    egress: {devices: true, cssm: {{ $online }}, webhooks: false}
    paths: ["/api/v1/tiers"]
    autoscale: true
  - key: renewalScheduler
    component: renewal-scheduler
    target: renewal-scheduler
    name: {{ $full }}-renewal-scheduler
    values: {{ toJson .Values.services.renewalScheduler }}
    egress: {devices: false, cssm: false, webhooks: true}
    paths: ["/api/v1/cycles", "/api/v1/compliance", "/api/v1/alerts", "/api/v1/silences", "/api/v1/webhooks"]
    autoscale: false
  - key: catalystApi
    component: catalyst-api
    target: catalyst-api
    name: {{ $full }}-catalyst-api
    values: {{ toJson .Values.services.catalystApi }}
    egress: {devices: false, cssm: false, webhooks: false}
    paths: ["/dna"]
    autoscale: true
{{- end }}
{{- end -}}

{{/* Fails early, with the setting to fix, on values that would only fail at start-up. */}}
{{- define "tally.validate" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if not .Values.secrets.apiTokens -}}
{{- fail "secrets.apiTokens is required (admin:<token>,...; tokens of 16+ characters), or name a Secret in secrets.existingSecret" -}}
{{- end -}}
{{- if lt (len .Values.secrets.secretKey) 16 -}}
{{- fail "secrets.secretKey must be at least 16 characters (it seals device credentials), or name a Secret in secrets.existingSecret" -}}
{{- end -}}
{{- if and (eq .Values.uplink.mode "online") (not .Values.secrets.cssmClientId) -}}
{{- fail "online mode needs secrets.cssmClientId and secrets.cssmClientSecret (or uplink.mode=offline)" -}}
{{- end -}}
{{- if and (not .Values.database.existingSecret.name) (not .Values.database.url) -}}
{{- fail "database.url is required (postgres://user:password@host:5432/tally), or name a Secret in database.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.secrets.existingSecret .Values.database.url (not .Values.database.existingSecret.name) -}}
{{- fail "database.url is not used when secrets.existingSecret is set: put TALLY_DATABASE_URL into that Secret (and leave database.url empty), or use database.existingSecret" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.egress.devices.cidrs) -}}
{{- fail "networkPolicy.egress.devices.cidrs is empty: with the network policy on, Tally could reach no device (list your management networks)" -}}
{{- end -}}
{{- end -}}

{{/* TALLY_DATABASE_URL from database.existingSecret, when set (wins over the envFrom Secret). */}}
{{- define "tally.databaseEnv" -}}
{{- if .Values.database.existingSecret.name }}
- name: TALLY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret.name }}
      key: {{ .Values.database.existingSecret.key }}
{{- end }}
{{- end -}}

{{- define "tally.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tally.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
