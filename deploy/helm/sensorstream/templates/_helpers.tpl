{{/*
Names, labels, the settings each component gets (as a map of SENSORSTREAM_* variables),
the secrets it needs (as files), probes and the checks that make a bad configuration fail
at render time instead of in the cluster.

Most helpers take a dict: (dict "root" $ "component" "processor").
*/}}

{{- define "sensorstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sensorstream.fullname" -}}
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

{{/* The name of a component's objects: <fullname>-<component>. */}}
{{- define "sensorstream.componentName" -}}
{{- printf "%s-%s" (include "sensorstream.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sensorstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sensorstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sensorstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sensorstream.selectorLabels" . }}
app.kubernetes.io/part-of: sensorstream
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "sensorstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sensorstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the secrets: existingSecret or the chart's. */}}
{{- define "sensorstream.secretName" -}}
{{- default (include "sensorstream.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The image of a component (topics uses the processor's image). */}}
{{- define "sensorstream.image" -}}
{{- $values := index .root.Values (eq .component "topics" | ternary "processor" .component) -}}
{{- $tag := $values.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $values.image.repository (toString $tag) -}}
{{- end -}}

{{- define "sensorstream.isSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "sensorstream.isTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/*
The secret files a component needs, as a JSON list of Secret keys. Which ones follows
from the configuration, never from which passwords happen to be set:
  sasl-password          Kafka SASL_*            (every Kafka client)
  ssl-key-password       kafka.tls.keyEncrypted  (every Kafka client)
  metrics-auth-password  metricsAuth.username    (the services, not the topics job)
  mqtt-password          bridge.mqtt.username    (bridge)
  database-password      sink.database.passwordAuth (sink)
*/}}
{{- define "sensorstream.secretKeys" -}}
{{- $v := .root.Values -}}
{{- $keys := list -}}
{{- if include "sensorstream.isSasl" .root -}}{{- $keys = append $keys "sasl-password" -}}{{- end -}}
{{- if $v.kafka.tls.keyEncrypted -}}{{- $keys = append $keys "ssl-key-password" -}}{{- end -}}
{{- if and (ne .component "topics") $v.metricsAuth.username -}}{{- $keys = append $keys "metrics-auth-password" -}}{{- end -}}
{{- if and (eq .component "bridge") $v.bridge.mqtt.username -}}{{- $keys = append $keys "mqtt-password" -}}{{- end -}}
{{- if and (eq .component "sink") $v.sink.database.passwordAuth -}}{{- $keys = append $keys "database-password" -}}{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{/* Each Secret key, the value that fills it and the variable naming its file. */}}
{{- define "sensorstream.secretSources" -}}
sasl-password: {value: {{ .Values.secrets.saslPassword | quote }}, env: SENSORSTREAM_SASL_PASSWORD_FILE, from: secrets.saslPassword}
ssl-key-password: {value: {{ .Values.secrets.sslKeyPassword | quote }}, env: SENSORSTREAM_SSL_KEY_PASSWORD_FILE, from: secrets.sslKeyPassword}
metrics-auth-password: {value: {{ .Values.secrets.metricsAuthPassword | quote }}, env: SENSORSTREAM_METRICS_AUTH_PASSWORD_FILE, from: secrets.metricsAuthPassword}
mqtt-password: {value: {{ .Values.secrets.mqttPassword | quote }}, env: SENSORSTREAM_MQTT_PASSWORD_FILE, from: secrets.mqttPassword}
database-password: {value: {{ .Values.secrets.databasePassword | quote }}, env: SENSORSTREAM_DATABASE_PASSWORD_FILE, from: secrets.databasePassword}
{{- end -}}

{{- define "sensorstream.secretsDir" -}}/var/run/secrets/sensorstream{{- end -}}

{{/* The components this release runs (the topics job included when enabled). */}}
{{- define "sensorstream.components" -}}
{{- $v := .Values -}}
{{- $all := list "processor" -}}
{{- if $v.producer.enabled -}}{{- $all = append $all "producer" -}}{{- end -}}
{{- if $v.bridge.enabled -}}{{- $all = append $all "bridge" -}}{{- end -}}
{{- if $v.sink.enabled -}}{{- $all = append $all "sink" -}}{{- end -}}
{{- if $v.topics.job.enabled -}}{{- $all = append $all "topics" -}}{{- end -}}
{{- toJson $all -}}
{{- end -}}

{{/*
The settings of a component as a YAML map of SENSORSTREAM_* variables (all strings): the
ConfigMap's data, and the topics job's env. <component>.env is merged last and wins,
except that a secret may never be given as a plain variable.
*/}}
{{- define "sensorstream.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := .component -}}
{{- $dir := include "sensorstream.secretsDir" $root -}}
{{- $env := dict -}}
{{- $_ := set $env "SENSORSTREAM_BOOTSTRAP_SERVERS" $v.kafka.bootstrapServers -}}
{{- $_ := set $env "SENSORSTREAM_SECURITY_PROTOCOL" $v.kafka.securityProtocol -}}
{{- if include "sensorstream.isSasl" $root -}}
{{- $_ := set $env "SENSORSTREAM_SASL_MECHANISM" $v.kafka.saslMechanism -}}
{{- if not $v.kafka.saslUsername -}}{{- fail "kafka.saslUsername is required with a SASL_* kafka.securityProtocol" -}}{{- end -}}
{{- $_ := set $env "SENSORSTREAM_SASL_USERNAME" $v.kafka.saslUsername -}}
{{- end -}}
{{- if include "sensorstream.isTls" $root -}}
{{- if $v.kafka.tls.existingSecret -}}
{{- if $v.kafka.tls.ca -}}{{- $_ := set $env "SENSORSTREAM_SSL_CAFILE" (printf "%s/kafka-tls/ca.crt" $dir) -}}{{- end -}}
{{- if $v.kafka.tls.clientCertificate -}}
{{- $_ := set $env "SENSORSTREAM_SSL_CERTFILE" (printf "%s/kafka-tls/tls.crt" $dir) -}}
{{- $_ := set $env "SENSORSTREAM_SSL_KEYFILE" (printf "%s/kafka-tls/tls.key" $dir) -}}
{{- end -}}
{{- else if or $v.kafka.tls.clientCertificate $v.kafka.tls.keyEncrypted -}}
{{- fail "kafka.tls.clientCertificate / keyEncrypted need kafka.tls.existingSecret (tls.crt, tls.key)" -}}
{{- end -}}
{{- end -}}
{{- $_ := set $env "SENSORSTREAM_LOG_LEVEL" $v.logLevel -}}
{{- $_ := set $env "SENSORSTREAM_LOG_FORMAT" "json" -}}
{{- $_ := set $env "SENSORSTREAM_STARTUP_TIMEOUT" (toString $v.startupTimeout) -}}
{{- if ne $c "topics" -}}
{{- $values := index $v $c -}}
{{- $_ := set $env "SENSORSTREAM_SHUTDOWN_TIMEOUT" (toString $v.shutdownTimeout) -}}
{{- $_ := set $env "SENSORSTREAM_METRICS_HOST" "0.0.0.0" -}}
{{- $_ := set $env "SENSORSTREAM_METRICS_PORT" (toString $values.metricsPort) -}}
{{- if $v.metricsAuth.username -}}{{- $_ := set $env "SENSORSTREAM_METRICS_AUTH_USERNAME" $v.metricsAuth.username -}}{{- end -}}
{{- if $v.metricsTls.existingSecret -}}
{{- $_ := set $env "SENSORSTREAM_METRICS_TLS_CERTFILE" (printf "%s/metrics-tls/tls.crt" $dir) -}}
{{- $_ := set $env "SENSORSTREAM_METRICS_TLS_KEYFILE" (printf "%s/metrics-tls/tls.key" $dir) -}}
{{- end -}}
{{- end -}}
{{- $sources := include "sensorstream.secretSources" $root | fromYaml -}}
{{- range $key := include "sensorstream.secretKeys" . | fromJsonArray -}}
{{- $_ := set $env (index $sources $key).env (printf "%s/%s" $dir $key) -}}
{{- end -}}
{{- $t := $v.topics -}}
{{- if eq $c "topics" -}}
{{- $_ := set $env "SENSORSTREAM_TOPIC" $t.input -}}
{{- $_ := set $env "SENSORSTREAM_AGGREGATES_TOPIC" $t.aggregates -}}
{{- $_ := set $env "SENSORSTREAM_ALERTS_TOPIC" $t.alerts -}}
{{- $_ := set $env "SENSORSTREAM_DLQ_TOPIC" $t.dlq -}}
{{- $_ := set $env "SENSORSTREAM_PARTITIONS" (toString $t.partitions) -}}
{{- $_ := set $env "SENSORSTREAM_REPLICATION_FACTOR" (toString $t.replicationFactor) -}}
{{- else if eq $c "producer" -}}
{{- $_ := set $env "SENSORSTREAM_TOPIC" $t.input -}}
{{- $_ := set $env "SENSORSTREAM_PARTITIONS" (toString $t.partitions) -}}
{{- $_ := set $env "SENSORSTREAM_REPLICATION_FACTOR" (toString $t.replicationFactor) -}}
{{- $_ := set $env "SENSORSTREAM_RATE" (toString $v.producer.rate) -}}
{{- $_ := set $env "SENSORSTREAM_RATE_PROFILE" $v.producer.rateProfile -}}
{{- $_ := set $env "SENSORSTREAM_SENSORS" (toString $v.producer.sensors) -}}
{{- else if eq $c "processor" -}}
{{- $_ := set $env "SENSORSTREAM_TOPIC" $t.input -}}
{{- $_ := set $env "SENSORSTREAM_GROUP_ID" $v.processor.groupId -}}
{{- $_ := set $env "SENSORSTREAM_AGGREGATES_TOPIC" $t.aggregates -}}
{{- $_ := set $env "SENSORSTREAM_ALERTS_TOPIC" $t.alerts -}}
{{- $_ := set $env "SENSORSTREAM_DLQ_TOPIC" $t.dlq -}}
{{- $_ := set $env "SENSORSTREAM_OUTPUT_PARTITIONS" (toString $t.partitions) -}}
{{- $_ := set $env "SENSORSTREAM_REPLICATION_FACTOR" (toString $t.replicationFactor) -}}
{{- $_ := set $env "SENSORSTREAM_GUARANTEE" $v.processor.guarantee -}}
{{- $_ := set $env "SENSORSTREAM_WINDOW_SIZE" (toString $v.processor.windowSize) -}}
{{- else if eq $c "bridge" -}}
{{- $_ := set $env "SENSORSTREAM_TOPIC" $t.input -}}
{{- $_ := set $env "SENSORSTREAM_DLQ_TOPIC" $t.dlq -}}
{{- $_ := set $env "SENSORSTREAM_PARTITIONS" (toString $t.partitions) -}}
{{- $_ := set $env "SENSORSTREAM_REPLICATION_FACTOR" (toString $t.replicationFactor) -}}
{{- $_ := set $env "SENSORSTREAM_MQTT_HOST" $v.bridge.mqtt.host -}}
{{- $_ := set $env "SENSORSTREAM_MQTT_PORT" (toString $v.bridge.mqtt.port) -}}
{{- $_ := set $env "SENSORSTREAM_MQTT_TOPIC" $v.bridge.mqtt.topic -}}
{{- if $v.bridge.mqtt.username -}}{{- $_ := set $env "SENSORSTREAM_MQTT_USERNAME" $v.bridge.mqtt.username -}}{{- end -}}
{{- else if eq $c "sink" -}}
{{- $_ := set $env "SENSORSTREAM_AGGREGATES_TOPIC" $t.aggregates -}}
{{- $_ := set $env "SENSORSTREAM_ALERTS_TOPIC" $t.alerts -}}
{{- $_ := set $env "SENSORSTREAM_DATABASE_HOST" $v.sink.database.host -}}
{{- $_ := set $env "SENSORSTREAM_DATABASE_PORT" (toString $v.sink.database.port) -}}
{{- $_ := set $env "SENSORSTREAM_DATABASE_USER" $v.sink.database.user -}}
{{- $_ := set $env "SENSORSTREAM_DATABASE_NAME" $v.sink.database.name -}}
{{- $_ := set $env "SENSORSTREAM_DATABASE_SSLMODE" $v.sink.database.sslmode -}}
{{- end -}}
{{- if ne $c "topics" -}}
{{- $plainSecrets := list "SENSORSTREAM_SASL_PASSWORD" "SENSORSTREAM_SSL_KEY_PASSWORD" "SENSORSTREAM_METRICS_AUTH_PASSWORD" "SENSORSTREAM_MQTT_PASSWORD" "SENSORSTREAM_DATABASE_PASSWORD" "SENSORSTREAM_DATABASE_URL" -}}
{{- range $key, $value := (index $v $c).env -}}
{{- if not (hasPrefix "SENSORSTREAM_" $key) -}}
{{- fail (printf "%s.env.%s: only SENSORSTREAM_* settings go here" $c $key) -}}
{{- end -}}
{{- if has $key $plainSecrets -}}
{{- fail (printf "%s.env.%s: a secret never goes in a variable; put it in secrets.* (or existingSecret), it is mounted as a file" $c $key) -}}
{{- end -}}
{{- $_ := set $env $key (toString $value) -}}
{{- end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of a component: ceil(shutdown timeout) + margin, or the
component's own value, which must be above the shutdown timeout the component gets.
*/}}
{{- define "sensorstream.terminationGrace" -}}
{{- $env := include "sensorstream.env" . | fromYaml -}}
{{- $timeout := float64 (index $env "SENSORSTREAM_SHUTDOWN_TIMEOUT") -}}
{{- $own := (index .root.Values .component).terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $own -}}
{{- add (int (ceil $timeout)) (int .root.Values.terminationGraceMargin) -}}
{{- else if le (float64 $own) $timeout -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be above its shutdown timeout (%v s), or Kubernetes kills it before it has flushed and committed" .component $own $timeout) -}}
{{- else -}}
{{- int $own -}}
{{- end -}}
{{- end -}}

{{/*
Liveness (/healthz: the event loop answers) and readiness (/readyz: the service's own
check) on the metrics port. With basic auth on, kubelet's httpGet cannot send the
password without putting it in the pod spec, so an exec probe reads the password file.
*/}}
{{- define "sensorstream.probe" -}}
{{- $v := .root.Values -}}
{{- $values := index $v .component -}}
{{- $settings := index $v.probes .kind -}}
{{- $path := eq .kind "liveness" | ternary "/healthz" "/readyz" -}}
{{- $scheme := ternary "https" "http" (not (empty $v.metricsTls.existingSecret)) -}}
{{- if $v.metricsAuth.username }}
exec:
  command:
    - python
    - -c
    - >-
      import base64, os, ssl, urllib.request as r;
      p = open(os.environ['SENSORSTREAM_METRICS_AUTH_PASSWORD_FILE'], encoding='utf-8').read().removesuffix('\n').removesuffix('\r');
      t = base64.b64encode((os.environ['SENSORSTREAM_METRICS_AUTH_USERNAME'] + ':' + p).encode()).decode();
      r.urlopen(r.Request('{{ $scheme }}://127.0.0.1:{{ $values.metricsPort }}{{ $path }}', headers={'Authorization': 'Basic ' + t}), timeout=2, context=ssl._create_unverified_context())
{{- else }}
httpGet:
  path: {{ $path }}
  port: metrics
  scheme: {{ upper $scheme }}
{{- end }}
{{ toYaml $settings }}
{{- end -}}

{{/* Volumes: /tmp, and the secret files the component needs. */}}
{{- define "sensorstream.volumes" -}}
{{- $v := .root.Values -}}
{{- $keys := include "sensorstream.secretKeys" . | fromJsonArray -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.tmpSizeLimit }}
{{- if or $keys (and (include "sensorstream.isTls" .root) $v.kafka.tls.existingSecret) (and (ne .component "topics") $v.metricsTls.existingSecret) }}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
{{- if $keys }}
      - secret:
          name: {{ .secretName | default (include "sensorstream.secretName" .root) }}
          items:
{{- range $keys }}
            - {key: {{ . }}, path: {{ . }}}
{{- end }}
{{- end }}
{{- if and (include "sensorstream.isTls" .root) $v.kafka.tls.existingSecret }}
      - secret:
          name: {{ $v.kafka.tls.existingSecret }}
          items:
{{- if $v.kafka.tls.ca }}
            - {key: ca.crt, path: kafka-tls/ca.crt}
{{- end }}
{{- if $v.kafka.tls.clientCertificate }}
            - {key: tls.crt, path: kafka-tls/tls.crt}
            - {key: tls.key, path: kafka-tls/tls.key}
{{- end }}
{{- end }}
{{- if and (ne .component "topics") $v.metricsTls.existingSecret }}
      - secret:
          name: {{ $v.metricsTls.existingSecret }}
          items:
            - {key: tls.crt, path: metrics-tls/tls.crt}
            - {key: tls.key, path: metrics-tls/tls.key}
{{- end }}
{{- end }}
{{- end -}}

{{- define "sensorstream.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- $v := .root.Values -}}
{{- $keys := include "sensorstream.secretKeys" . | fromJsonArray -}}
{{- if or $keys (and (include "sensorstream.isTls" .root) $v.kafka.tls.existingSecret) (and (ne .component "topics") $v.metricsTls.existingSecret) }}
- name: secrets
  mountPath: {{ include "sensorstream.secretsDir" .root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The pod spec's common part: account, hardening, scheduling. */}}
{{- define "sensorstream.podCommon" -}}
{{- $v := .root.Values -}}
{{- if not .hook }}
serviceAccountName: {{ include "sensorstream.serviceAccountName" .root }}
{{- else if not $v.serviceAccount.create }}
serviceAccountName: {{ include "sensorstream.serviceAccountName" .root }}
{{- end }}
automountServiceAccountToken: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The input topic and consumer group the processor really uses (after processor.env). */}}
{{- define "sensorstream.processorLag" -}}
{{- $env := include "sensorstream.env" (dict "root" . "component" "processor") | fromYaml -}}
topic: {{ index $env "SENSORSTREAM_TOPIC" | quote }}
consumerGroup: {{ index $env "SENSORSTREAM_GROUP_ID" | quote }}
{{- end -}}

{{/* maxReplicaCount of an autoscaler: the input partitions, or less. */}}
{{- define "sensorstream.maxReplicas" -}}
{{- $partitions := int .root.Values.topics.partitions -}}
{{- if kindIs "invalid" .max -}}
{{- $partitions -}}
{{- else if gt (int .max) $partitions -}}
{{- fail (printf "%s (%v) is above topics.partitions (%v): replicas beyond the partition count sit idle" .name .max $partitions) -}}
{{- else -}}
{{- int .max -}}
{{- end -}}
{{- end -}}
