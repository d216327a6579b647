{{/*
Names. The fullname contains "audit-relay" unless fullnameOverride says otherwise: the
alert AuditRelayDown (files/alerts.yaml) matches up{job=~".*audit-relay.*"}, and the
ServiceMonitor's job is the admin Service's name.
*/}}
{{- define "audit-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "audit-relay.fullname" -}}
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

{{- define "audit-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "audit-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The server pods' selector labels (the relay is part of those pods). */}}
{{- define "audit-relay.selectorLabels" -}}
{{- toYaml .Values.server.selectorLabels -}}
{{- end -}}

{{- define "audit-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "audit-relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Where each referenced Secret is mounted, and the config key it fills.
*/}}
{{- define "audit-relay.secretMounts" -}}
signingKey: {dir: /etc/audit-relay-secrets/signing, section: integrity, configKey: signing_key_file}
jwks: {dir: /etc/audit-relay-secrets/jwks, section: api.auth, configKey: jwt_jwks_file}
jwtHs256Secret: {dir: /etc/audit-relay-secrets/jwt-hs256, section: api.auth, configKey: jwt_hs256_secret_file}
postgresPassword: {dir: /etc/audit-relay-secrets/postgres-password, section: postgres, configKey: password_file}
postgresCa: {dir: /etc/audit-relay-secrets/postgres-ca, section: postgres, configKey: ca_file}
{{- end -}}

{{/*
The config the relay gets: .Values.config with what the chart derives from the other
values (source.paths from server.logs, the mounted Secrets' paths). Fails when a value
and a Secret reference set the same key, or when a choice needs a section that is absent.
Returns YAML; callers use fromYaml.
*/}}
{{- define "audit-relay.effectiveConfig" -}}
{{- $c := deepCopy (default (dict) .Values.config) -}}
{{- $source := default (dict) $c.source -}}
{{- if not $source.paths -}}
{{- $_ := set $source "paths" (list (printf "%s/%s" (trimSuffix "/" .Values.server.logs.path) .Values.server.logs.pattern)) -}}
{{- end -}}
{{- $_ := set $c "source" $source -}}
{{- $mounts := include "audit-relay.secretMounts" . | fromYaml -}}
{{- range $ref, $m := $mounts -}}
{{- $s := index $.Values.secrets $ref -}}
{{- if $s.name -}}
{{- $table := $c -}}
{{- range $part := splitList "." $m.section -}}
{{- $next := index $table $part -}}
{{- if not (kindIs "map" $next) -}}
{{- fail (printf "secrets.%s.name is set, but config.%s is not: the Secret fills config.%s.%s, so that section must be present" $ref $m.section $m.section $m.configKey) -}}
{{- end -}}
{{- $table = $next -}}
{{- end -}}
{{- if hasKey $table $m.configKey -}}
{{- if not (kindIs "invalid" (index $table $m.configKey)) -}}
{{- fail (printf "config.%s.%s and secrets.%s.name are both set: give one (the chart mounts the Secret and sets the key)" $m.section $m.configKey $ref) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $table $m.configKey (printf "%s/%s" $m.dir $s.key) -}}
{{- end -}}
{{- end -}}
{{- if .Values.secrets.apiTls.name -}}
{{- if not (kindIs "map" $c.api) -}}
{{- fail "secrets.apiTls.name is set, but config.api is not: the certificate is the query API's" -}}
{{- end -}}
{{- if or $c.api.tls_cert $c.api.tls_key -}}
{{- fail "config.api.tls_cert/tls_key and secrets.apiTls.name are both set: give one" -}}
{{- end -}}
{{- $_ := set $c.api "tls_cert" (printf "/etc/audit-relay-secrets/api-tls/%s" .Values.secrets.apiTls.cert) -}}
{{- $_ := set $c.api "tls_key" (printf "/etc/audit-relay-secrets/api-tls/%s" .Values.secrets.apiTls.key) -}}
{{- end -}}
{{- if not (kindIs "map" $c.admin) -}}
{{- fail "config.admin is required: the liveness probe, the ServiceMonitor and the alerts use its port" -}}
{{- end -}}
{{- if not $c.admin.listen -}}
{{- fail "config.admin.listen is required (e.g. \"0.0.0.0:9090\")" -}}
{{- end -}}
{{- if eq .Values.spool.volume "emptyDir" -}}
{{- if not (kindIs "map" $c.postgres) -}}
{{- fail "spool.volume is emptyDir but config.postgres is not set: without the installation store the spool is the only copy of what is not yet in CloudWatch, and an emptyDir dies with its pod. Use spool.volume: persistentVolumeClaim, or turn the installation store on (config.postgres)" -}}
{{- end -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* The port of an "IP:port" listen address. */}}
{{- define "audit-relay.port" -}}
{{- $p := regexFind "[0-9]+$" . -}}
{{- if not $p -}}{{- fail (printf "cannot read a port from listen address %q" .) -}}{{- end -}}
{{- $p -}}
{{- end -}}

{{/*
Whole seconds of a duration string of the relay ("10s", "500ms", "5m", "1h", "1d"),
rounded up.
*/}}
{{- define "audit-relay.seconds" -}}
{{- $d := nospace . -}}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h|d)$" $d) -}}{{- fail (printf "config.shutdown_grace: %q is not a duration such as \"10s\"" .) -}}{{- end -}}
{{- $n := regexReplaceAll "^([0-9]+)(ms|s|m|h|d)$" $d "${1}" | int64 -}}
{{- $u := regexReplaceAll "^([0-9]+)(ms|s|m|h|d)$" $d "${2}" -}}
{{- if eq $u "ms" -}}{{- div (add $n 999) 1000 -}}
{{- else if eq $u "s" -}}{{- $n -}}
{{- else if eq $u "m" -}}{{- mul $n 60 -}}
{{- else if eq $u "h" -}}{{- mul $n 3600 -}}
{{- else -}}{{- mul $n 86400 -}}
{{- end -}}
{{- end -}}

{{/*
TOML. A value: strings as JSON strings (a subset of TOML's basic strings), whole numbers
as integers (YAML numbers reach templates as floats), booleans, arrays, and maps as
inline tables.
*/}}
{{- define "audit-relay.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "audit-relay.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}{{ int64 $v }}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "audit-relay.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- range $i, $k := (keys $v | sortAlpha) }}{{ if $i }},{{ end }} {{ include "audit-relay.tomlKey" $k }} = {{ include "audit-relay.tomlValue" (index $v $k) }}{{ end }} }
{{- else -}}{{ fail (printf "config: cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end -}}
{{- end -}}

{{/* A list whose every element is a map: an array of tables ([[api.tokens]]). */}}
{{- define "audit-relay.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- $all := true -}}
{{- range . }}{{ if not (kindIs "map" .) }}{{ $all = false }}{{ end }}{{ end -}}
{{- if $all }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/*
A table: its plain keys, then its sub-tables ([a.b], for maps) and arrays of tables
([[a.b]]). Null values are left out, so `--set config.cloudwatch=null` removes a section.
Maps of strings such as cloudwatch.tags become sub-tables, which TOML reads the same as
inline tables.
*/}}
{{- define "audit-relay.tomlTable" -}}
{{- $t := .table -}}
{{- $p := .prefix -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := index $t $k -}}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "audit-relay.isTableArray" $v)) }}
{{ include "audit-relay.tomlKey" $k }} = {{ include "audit-relay.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := index $t $k -}}
{{- $name := printf "%s%s" $p (include "audit-relay.tomlKey" $k) -}}
{{- if kindIs "map" $v }}

[{{ $name }}]
{{- include "audit-relay.tomlTable" (dict "prefix" (printf "%s." $name) "table" $v) -}}
{{- else if include "audit-relay.isTableArray" $v -}}
{{- range $e := $v }}

[[{{ $name }}]]
{{- include "audit-relay.tomlTable" (dict "prefix" (printf "%s." $name) "table" $e) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "audit-relay.configToml" -}}
# Rendered by the audit-relay Helm chart from its values (config, server.logs, secrets).
# Every key is documented in config/audit-relay.toml.
{{- include "audit-relay.tomlTable" (dict "prefix" "" "table" (include "audit-relay.effectiveConfig" . | fromYaml)) }}
{{ end -}}
