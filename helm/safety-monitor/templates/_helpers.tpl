{{/*
Names, labels, images and the settings file. The pod itself is in _pod.tpl.
*/}}

{{- define "safety-monitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "safety-monitor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "safety-monitor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "safety-monitor.labels" -}}
helm.sh/chart: {{ include "safety-monitor.chart" . }}
{{ include "safety-monitor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: safety-monitor
{{- end }}

{{- define "safety-monitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "safety-monitor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector of the model-server + sidecar pods. */}}
{{- define "safety-monitor.podSelectorLabels" -}}
{{ include "safety-monitor.selectorLabels" . }}
app.kubernetes.io/component: model-server
{{- end }}

{{- define "safety-monitor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "safety-monitor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference. Argument: dict "image" <repository/tag/digest values> "root" $.
An empty repository means the chart's image (with this tag or digest when given).
*/}}
{{- define "safety-monitor.image" -}}
{{- $base := .root.Values.image -}}
{{- $eff := pick $base "repository" "tag" "digest" -}}
{{- if and .image.repository (ne .image.repository $base.repository) -}}
{{- if not (or .image.tag .image.digest) -}}
{{- fail (printf "image %s: set its tag or digest" .image.repository) -}}
{{- end -}}
{{- $eff = dict "repository" .image.repository "tag" .image.tag "digest" .image.digest -}}
{{- else -}}
{{- if .image.tag }}{{ $_ := set $eff "tag" .image.tag }}{{ $_ := set $eff "digest" "" }}{{ end -}}
{{- if .image.digest }}{{ $_ := set $eff "digest" .image.digest }}{{ end -}}
{{- end -}}
{{- if $eff.digest -}}
{{- printf "%s@%s" $eff.repository $eff.digest -}}
{{- else -}}
{{- printf "%s:%s" $eff.repository (toString (default .root.Chart.AppVersion $eff.tag)) -}}
{{- end -}}
{{- end }}

{{- define "safety-monitor.pullPolicy" -}}
{{- default .root.Values.image.pullPolicy .image.pullPolicy -}}
{{- end }}

{{/* "true" when the sidecar runs as a native sidecar (init container with restartPolicy: Always), else "". */}}
{{- define "safety-monitor.nativeSidecar" -}}
{{- $mode := toString .Values.sidecar.native -}}
{{- if eq $mode "true" -}}
{{- if semverCompare "<1.28-0" .Capabilities.KubeVersion.Version -}}
{{- fail (printf "sidecar.native=true needs Kubernetes 1.28+ (native sidecars are beta and on by default from 1.29); this cluster is %s: use sidecar.native=auto or false" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
true
{{- else if eq $mode "auto" -}}
{{- if semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version }}true{{ end -}}
{{- end -}}
{{- end }}

{{/* Fixed paths inside the containers. */}}
{{- define "safety-monitor.configDir" -}}/etc/safety-monitor/config{{- end }}
{{- define "safety-monitor.settingsFile" -}}/etc/safety-monitor/config/settings.yaml{{- end }}
{{- define "safety-monitor.detectorsDir" -}}/etc/safety-monitor/detectors{{- end }}
{{- define "safety-monitor.saeDir" -}}/var/lib/safety-monitor/sae{{- end }}
{{- define "safety-monitor.outboxDir" -}}/var/lib/safety-monitor/outbox{{- end }}
{{- define "safety-monitor.samplesFile" -}}/var/lib/safety-monitor/outbox/traffic-samples.sqlite3{{- end }}
{{- define "safety-monitor.cacheDir" -}}/var/cache/safety-monitor{{- end }}
{{- define "safety-monitor.kafkaTlsDir" -}}/etc/safety-monitor/kafka-tls{{- end }}
{{- define "safety-monitor.redisTlsDir" -}}/etc/safety-monitor/redis-tls{{- end }}

{{/* SAE path the sidecar loads, "" for the shipped default. */}}
{{- define "safety-monitor.saePath" -}}
{{- $sae := .Values.sae -}}
{{- if eq $sae.source "image" -}}
{{- $sae.path -}}
{{- else -}}
{{- $dir := include "safety-monitor.saeDir" . -}}
{{- if $sae.path }}{{ printf "%s/%s" $dir (trimPrefix "/" $sae.path) }}{{ else }}{{ $dir }}{{ end -}}
{{- end -}}
{{- end }}

{{/* Name of the detector ConfigMap ("" when the specs come from the image). */}}
{{- define "safety-monitor.detectorsConfigMap" -}}
{{- if eq .Values.detectors.source "configMap" -}}
{{- if .Values.detectors.configMap.name -}}
{{- .Values.detectors.configMap.name -}}
{{- else -}}
{{- printf "%s-detectors" (include "safety-monitor.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Checks that templates cannot express in the schema; each failure says which value to change.
*/}}
{{- define "safety-monitor.validate" -}}
{{- $v := .Values -}}
{{- if not $v.auth.existingSecret -}}
{{- fail "auth.existingSecret is required: name a Secret holding the sidecar's ingest and admin tokens (keys auth.ingestTokenKey and auth.adminTokenKey); see the chart README" -}}
{{- end -}}
{{- if and (ne $v.sae.source "image") (not $v.sae.sha256) -}}
{{- fail (printf "sae.sha256 is required with sae.source=%s: pin the SAE (`safety-monitor sae hash DIR` prints it); thresholds are only valid for the SAE they were calibrated on" $v.sae.source) -}}
{{- end -}}
{{- if and (eq $v.sae.source "image") $v.sae.path (not $v.sae.sha256) -}}
{{- fail "sae.sha256 is required when sae.path names an SAE other than the shipped default" -}}
{{- end -}}
{{- if and (eq $v.sae.source "pvc") (not $v.sae.pvc.claimName) -}}
{{- fail "sae.pvc.claimName is required with sae.source=pvc" -}}
{{- end -}}
{{- if and (eq $v.sae.source "initContainer") (or (not $v.sae.initContainer.image.repository) (not $v.sae.initContainer.command)) -}}
{{- fail "sae.initContainer.image.repository and sae.initContainer.command are required with sae.source=initContainer" -}}
{{- end -}}
{{- if and (eq $v.detectors.source "configMap") (not $v.detectors.configMap.name) (not $v.detectors.specs) -}}
{{- fail "detectors.source=configMap needs detectors.configMap.name (an existing ConfigMap) or detectors.specs (inline specs)" -}}
{{- end -}}
{{- if and $v.detectors.configMap.name $v.detectors.specs -}}
{{- fail "set either detectors.configMap.name or detectors.specs, not both" -}}
{{- end -}}
{{- if and $v.kafka.enabled (not $v.kafka.bootstrapServers) -}}
{{- fail "kafka.bootstrapServers is required with kafka.enabled" -}}
{{- end -}}
{{- if and $v.kafka.enabled $v.kafka.sasl.mechanism (not $v.kafka.sasl.existingSecret) -}}
{{- fail "kafka.sasl.existingSecret is required with kafka.sasl.mechanism (the password is only read from a Secret)" -}}
{{- end -}}
{{- if and $v.kafka.enabled $v.kafka.sasl.mechanism (not (or $v.kafka.sasl.username $v.kafka.sasl.usernameKey)) -}}
{{- fail "kafka.sasl.username or kafka.sasl.usernameKey is required with kafka.sasl.mechanism" -}}
{{- end -}}
{{- if and $v.kafka.enabled $v.kafka.sasl.mechanism (not (hasPrefix "SASL_" $v.kafka.securityProtocol)) -}}
{{- fail "kafka.sasl.mechanism needs kafka.securityProtocol SASL_SSL (or SASL_PLAINTEXT)" -}}
{{- end -}}
{{- if and $v.redis.enabled (not $v.redis.url) -}}
{{- fail "redis.url is required with redis.enabled" -}}
{{- end -}}
{{- if and $v.redis.tls.existingSecret (not (hasPrefix "rediss://" $v.redis.url)) -}}
{{- fail "redis.tls.existingSecret needs a rediss:// redis.url" -}}
{{- end -}}
{{- if and (not $v.kafka.enabled) (hasKey $v.config "kafka") -}}
{{- fail "config.kafka is only used with kafka.enabled=true" -}}
{{- end -}}
{{- if and (not $v.redis.enabled) (hasKey $v.config "redis") -}}
{{- fail "config.redis is only used with redis.enabled=true" -}}
{{- end -}}
{{- if and (eq $v.mode "deployment") $v.outbox.persistence.enabled -}}
{{- if not $v.outbox.persistence.existingClaim -}}
{{- fail "outbox.persistence with mode=deployment needs outbox.persistence.existingClaim; or use mode=statefulset for one claim per replica" -}}
{{- end -}}
{{- if gt (int $v.replicaCount) 1 -}}
{{- fail "outbox.persistence.existingClaim is one SQLite outbox: replicaCount must be 1 (use mode=statefulset for one claim per replica)" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.mode "statefulset") $v.outbox.persistence.existingClaim -}}
{{- fail "outbox.persistence.existingClaim is for mode=deployment; mode=statefulset makes one claim per replica" -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled (not $v.service.enabled) -}}
{{- fail "serviceMonitor.enabled needs service.enabled (the ServiceMonitor selects the chart's Service)" -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled (not $v.service.exposeMonitor) -}}
{{- fail "serviceMonitor.enabled needs service.exposeMonitor (the sidecar's /metrics is on the monitor port)" -}}
{{- end -}}
{{- if and $v.webhookRouter.enabled (not (and $v.kafka.enabled $v.redis.enabled)) -}}
{{- fail "webhookRouter.enabled needs kafka.enabled (it consumes the alert topic) and redis.enabled (subscriptions live there)" -}}
{{- end -}}
{{- if $v.recalibration.enabled -}}
{{- if not $v.samples.enabled -}}
{{- fail "recalibration.enabled needs samples.enabled: it recalibrates on the traffic samples the sidecar records" -}}
{{- end -}}
{{- if not (and (eq $v.mode "deployment") $v.outbox.persistence.enabled $v.outbox.persistence.existingClaim) -}}
{{- fail "recalibration.enabled needs mode=deployment with outbox.persistence.existingClaim: the job reads the samples from the outbox volume" -}}
{{- end -}}
{{- if not $v.recalibration.output.claimName -}}
{{- fail "recalibration.enabled needs recalibration.output.claimName (a PVC for the export, the proposed specs and the report)" -}}
{{- end -}}
{{- end -}}
{{- if and $v.calibration.enabled (not (and $v.calibration.data.claimName $v.calibration.output.claimName)) -}}
{{- fail "calibration.enabled needs calibration.data.claimName and calibration.output.claimName (PVCs with the labelled data and for the results)" -}}
{{- end -}}
{{- if eq (int $v.sidecar.port) (int $v.modelServer.port) -}}
{{- fail "sidecar.port and modelServer.port must differ (the containers share the pod's network namespace)" -}}
{{- end -}}
{{- if and (gt (float64 $v.modelServer.rawShare) 0.0) (not $v.modelServer.encodeAtTap) -}}
{{- fail "modelServer.rawShare needs modelServer.encodeAtTap (without it every request ships its activations)" -}}
{{- end -}}
{{- if and $v.modelServer.encodeAtTap $v.modelServer.command -}}
{{- fail "modelServer.encodeAtTap configures the example model server; a custom modelServer.command attaches its own tap with an encoder (docs/sidecar.md)" -}}
{{- end -}}
{{- $drain := dig "server" "shutdown_drain_s" 5 $v.config | int -}}
{{- $need := add $drain 20 (ternary (int $v.sidecar.legacyPreStopSleepSeconds) 0 (not (include "safety-monitor.nativeSidecar" .))) -}}
{{- if lt (int $v.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "terminationGracePeriodSeconds=%d is too short to drain the queue (config.server.shutdown_drain_s=%d) and flush the outbox: use at least %d" (int $v.terminationGracePeriodSeconds) $drain $need) -}}
{{- end -}}
{{- end }}

{{/*
The settings file (monitor/service/settings.py) as YAML: `config` merged with the keys the chart owns.
The schema rejects the owned keys inside `config`, so nothing is silently overridden.
*/}}
{{- define "safety-monitor.settings" -}}
{{- $v := .Values -}}
{{- $s := deepCopy $v.config -}}
{{- $owned := dict
  "server" (dict "host" "0.0.0.0" "port" (int $v.sidecar.port))
  "model_server" (dict "host" "0.0.0.0" "port" (int $v.modelServer.port) "sidecar_url" (printf "http://127.0.0.1:%d" (int $v.sidecar.port)))
  "alerts" (dict "outbox" (dict "path" (printf "%s/alerts-outbox.sqlite3" (include "safety-monitor.outboxDir" .))))
-}}
{{- if $v.modelServer.encodeAtTap -}}
{{- $_ := set $owned.model_server "encode_at_tap" true -}}
{{- $_ := set $owned.model_server "raw_share" (float64 $v.modelServer.rawShare) -}}
{{- end -}}
{{- $saePath := include "safety-monitor.saePath" . -}}
{{- $sae := dict -}}
{{- if $saePath }}{{ $_ := set $sae "path" $saePath }}{{ end -}}
{{- if $v.sae.sha256 }}{{ $_ := set $sae "sha256" $v.sae.sha256 }}{{ end -}}
{{- if $sae }}{{ $_ := set $owned "sae" $sae }}{{ end -}}
{{- if include "safety-monitor.detectorsConfigMap" . -}}
{{- $_ := set $owned "detectors" (dict "dir" (include "safety-monitor.detectorsDir" .)) -}}
{{- end -}}
{{- if $v.kafka.enabled -}}
{{- $k := dict "bootstrap_servers" $v.kafka.bootstrapServers "security_protocol" $v.kafka.securityProtocol -}}
{{- if $v.kafka.sasl.mechanism -}}
{{- $_ := set $k "sasl_mechanism" $v.kafka.sasl.mechanism -}}
{{- if and $v.kafka.sasl.username (not $v.kafka.sasl.usernameKey) }}{{ $_ := set $k "sasl_plain_username" $v.kafka.sasl.username }}{{ end -}}
{{- end -}}
{{- with $v.kafka.tls -}}
{{- if .existingSecret -}}
{{- $dir := include "safety-monitor.kafkaTlsDir" $ -}}
{{- if .caKey }}{{ $_ := set $k "ssl_cafile" (printf "%s/ca.crt" $dir) }}{{ end -}}
{{- if .certKey }}{{ $_ := set $k "ssl_certfile" (printf "%s/tls.crt" $dir) }}{{ end -}}
{{- if .keyKey }}{{ $_ := set $k "ssl_keyfile" (printf "%s/tls.key" $dir) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $owned "kafka" $k -}}
{{- $_ := set $owned.alerts "publisher" (dict "topic" $v.kafka.topic "per_detector_topics" $v.kafka.perDetectorTopics) -}}
{{- end -}}
{{- if $v.samples.enabled -}}
{{- $_ := set $owned "samples" (dict "enabled" true "rate" $v.samples.rate "max_rows" (int $v.samples.maxRows) "path" (include "safety-monitor.samplesFile" .)) -}}
{{- end -}}
{{- if $v.redis.enabled -}}
{{- $r := dict "url" $v.redis.url -}}
{{- if $v.redis.username }}{{ $_ := set $r "username" $v.redis.username }}{{ end -}}
{{- if $v.redis.tls.existingSecret }}{{ $_ := set $r "ssl_ca_certs" (printf "%s/ca.crt" (include "safety-monitor.redisTlsDir" .)) }}{{ end -}}
{{- $_ := set $owned "redis" $r -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $s $owned) -}}
{{- end }}

{{/* Security context of a container: containerSecurityContext with a per-container override merged in. */}}
{{- define "safety-monitor.containerSecurityContext" -}}
{{- $base := deepCopy .root.Values.containerSecurityContext -}}
{{- toYaml (mustMergeOverwrite $base (deepCopy (default dict .override))) -}}
{{- end }}

{{/* Secret-backed environment variable. Arguments: dict "name" "secret" "key". */}}
{{- define "safety-monitor.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
{{- end }}

{{/* Environment of processes that read monitor.settings (sidecar, model server): tokens and credentials. */}}
{{- define "safety-monitor.tokenEnv" -}}
{{ include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_AUTH__INGEST_TOKEN" "secret" .Values.auth.existingSecret "key" .Values.auth.ingestTokenKey) }}
{{ include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_AUTH__ADMIN_TOKEN" "secret" .Values.auth.existingSecret "key" .Values.auth.adminTokenKey) }}
{{- end }}

{{- define "safety-monitor.credentialEnv" -}}
{{- $v := .Values -}}
{{- if and $v.kafka.enabled $v.kafka.sasl.mechanism }}
{{- if $v.kafka.sasl.usernameKey }}
{{ include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_KAFKA__SASL_PLAIN_USERNAME" "secret" $v.kafka.sasl.existingSecret "key" $v.kafka.sasl.usernameKey) }}
{{- end }}
{{ include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_KAFKA__SASL_PLAIN_PASSWORD" "secret" $v.kafka.sasl.existingSecret "key" $v.kafka.sasl.passwordKey) }}
{{- end }}
{{- if and $v.kafka.enabled $v.kafka.tls.existingSecret $v.kafka.tls.keyPasswordKey }}
{{ include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_KAFKA__SSL_PASSWORD" "secret" $v.kafka.tls.existingSecret "key" $v.kafka.tls.keyPasswordKey) }}
{{- end }}
{{- if and $v.redis.enabled $v.redis.auth.existingSecret }}
{{ include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_REDIS__PASSWORD" "secret" $v.redis.auth.existingSecret "key" $v.redis.auth.passwordKey) }}
{{- end }}
{{- end }}

{{/* Volumes with TLS material (a Secret's keys mapped to fixed file names). */}}
{{- define "safety-monitor.tlsVolumes" -}}
{{- $v := .Values -}}
{{- if and $v.kafka.enabled $v.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ $v.kafka.tls.existingSecret | quote }}
    defaultMode: 288
    items:
      {{- if $v.kafka.tls.caKey }}
      - key: {{ $v.kafka.tls.caKey | quote }}
        path: ca.crt
      {{- end }}
      {{- if $v.kafka.tls.certKey }}
      - key: {{ $v.kafka.tls.certKey | quote }}
        path: tls.crt
      {{- end }}
      {{- if $v.kafka.tls.keyKey }}
      - key: {{ $v.kafka.tls.keyKey | quote }}
        path: tls.key
      {{- end }}
{{- end }}
{{- if and $v.redis.enabled $v.redis.tls.existingSecret }}
- name: redis-tls
  secret:
    secretName: {{ $v.redis.tls.existingSecret | quote }}
    defaultMode: 288
    items:
      - key: {{ $v.redis.tls.caKey | quote }}
        path: ca.crt
{{- end }}
{{- end }}

{{- define "safety-monitor.tlsVolumeMounts" -}}
{{- $v := .Values -}}
{{- if and $v.kafka.enabled $v.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ include "safety-monitor.kafkaTlsDir" . }}
  readOnly: true
{{- end }}
{{- if and $v.redis.enabled $v.redis.tls.existingSecret }}
- name: redis-tls
  mountPath: {{ include "safety-monitor.redisTlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The SAE volume (pvc or the init container's emptyDir); nothing for sae.source=image. */}}
{{- define "safety-monitor.saeVolume" -}}
{{- if eq .Values.sae.source "pvc" }}
- name: sae
  persistentVolumeClaim:
    claimName: {{ .Values.sae.pvc.claimName | quote }}
    readOnly: true
{{- else if eq .Values.sae.source "initContainer" }}
- name: sae
  emptyDir:
    sizeLimit: {{ .Values.sae.initContainer.sizeLimit }}
{{- end }}
{{- end }}

{{- define "safety-monitor.saeVolumeMount" -}}
{{- if ne .Values.sae.source "image" }}
- name: sae
  mountPath: {{ include "safety-monitor.saeDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The init container that fills the SAE volume (sae.source=initContainer). */}}
{{- define "safety-monitor.saeInitContainer" -}}
{{- if eq .Values.sae.source "initContainer" }}
{{- $ic := .Values.sae.initContainer }}
- name: fetch-sae
  image: {{ include "safety-monitor.image" (dict "image" $ic.image "root" .) | quote }}
  imagePullPolicy: {{ include "safety-monitor.pullPolicy" (dict "image" $ic.image "root" .) }}
  command: {{ toJson $ic.command }}
  {{- with $ic.args }}
  args: {{ toJson . }}
  {{- end }}
  env:
    - name: SAE_DIR
      value: {{ include "safety-monitor.saeDir" . | quote }}
    {{- with $ic.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- include "safety-monitor.containerSecurityContext" (dict "root" .) | nindent 4 }}
  resources:
    {{- toYaml $ic.resources | nindent 4 }}
  volumeMounts:
    - name: sae
      mountPath: {{ include "safety-monitor.saeDir" . }}
    - name: fetch-sae-tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* Model-cache volume when the cache is not baked into the image. */}}
{{- define "safety-monitor.cacheVolume" -}}
{{- if not .Values.modelCache.bakedInImage }}
- name: model-cache
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
{{- end }}
{{- end }}

{{- define "safety-monitor.cacheMount" -}}
{{- if not .Values.modelCache.bakedInImage }}
- name: model-cache
  mountPath: {{ include "safety-monitor.cacheDir" . }}
{{- end }}
{{- end }}

{{- define "safety-monitor.cacheEnv" -}}
{{- if not .Values.modelCache.bakedInImage }}
- name: SAFETY_MONITOR_CACHE
  value: {{ include "safety-monitor.cacheDir" . | quote }}
{{- end }}
{{- end }}

{{/* An emptyDir for /tmp. Argument: dict "name" "root". */}}
{{- define "safety-monitor.tmpVolume" -}}
- name: {{ .name }}
  emptyDir:
    {{- if .root.Values.tmp.medium }}
    medium: {{ .root.Values.tmp.medium }}
    {{- end }}
    sizeLimit: {{ .root.Values.tmp.sizeLimit }}
{{- end }}

{{/* NetworkPolicy egress rules shared by the pod and the webhook router: DNS, Kafka, Redis. */}}
{{- define "safety-monitor.egressCommon" -}}
{{- $np := .Values.networkPolicy -}}
# DNS
- to:
    {{- toYaml $np.dns.to | nindent 4 }}
  ports:
    {{- toYaml $np.dns.ports | nindent 4 }}
{{- if .Values.kafka.enabled }}
# Kafka brokers
- ports:
    {{- toYaml $np.kafka.ports | nindent 4 }}
  {{- with $np.kafka.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if .Values.redis.enabled }}
# Redis
- ports:
    {{- toYaml $np.redis.ports | nindent 4 }}
  {{- with $np.redis.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Environment of the webhook router: alerts/cli.py reads SAFETY_MONITOR_KAFKA_* and SAFETY_MONITOR_REDIS_PASSWORD. */}}
{{- define "safety-monitor.routerEnv" -}}
{{- $v := .Values -}}
{{- $wr := .Values.webhookRouter -}}
{{- if $v.kafka.sasl.mechanism }}
{{- if $v.kafka.sasl.usernameKey }}
{{- include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_KAFKA_SASL_USERNAME" "secret" $v.kafka.sasl.existingSecret "key" $v.kafka.sasl.usernameKey) | nindent 0 }}
{{- end }}
{{- include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_KAFKA_SASL_PASSWORD" "secret" $v.kafka.sasl.existingSecret "key" $v.kafka.sasl.passwordKey) | nindent 0 }}
{{- end }}
{{- if and $v.kafka.tls.existingSecret $v.kafka.tls.keyPasswordKey }}
{{- include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_KAFKA_SSL_PASSWORD" "secret" $v.kafka.tls.existingSecret "key" $v.kafka.tls.keyPasswordKey) | nindent 0 }}
{{- end }}
{{- if $v.redis.auth.existingSecret }}
{{- include "safety-monitor.secretEnv" (dict "name" "SAFETY_MONITOR_REDIS_PASSWORD" "secret" $v.redis.auth.existingSecret "key" $v.redis.auth.passwordKey) | nindent 0 }}
{{- end }}
{{- with $wr.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}
