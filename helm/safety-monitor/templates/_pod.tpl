{{/*
The pod: model server + safety-monitor sidecar. Defined once, used by the Deployment and the StatefulSet.

Sidecar placement ("safety-monitor.nativeSidecar"):
  native:  initContainers[] with restartPolicy: Always. The kubelet starts it before the model server and
           waits for its startup probe (SAE and detectors loaded), and stops it only after the model
           server has exited, so the last activations are still scored and their alerts committed.
  regular: a second entry of containers[]; no start or stop order, so a preStop sleep keeps it running
           while the model server shuts down.
*/}}

{{- define "safety-monitor.sidecarContainer" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
- name: safety-monitor
  image: {{ include "safety-monitor.image" (dict "image" (dict) "root" $root) | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  command: ["safety-monitor", "serve", "--config", {{ include "safety-monitor.settingsFile" $root | quote }}]
  ports:
    - name: monitor
      containerPort: {{ $v.sidecar.port }}
      protocol: TCP
  env:
    {{- include "safety-monitor.tokenEnv" $root | nindent 4 }}
    {{- with include "safety-monitor.credentialEnv" $root | trim }}{{ nindent 4 . }}{{- end }}
    - name: SAFETY_MONITOR_ALERTS__INSTANCE
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- if dig "model" "load" false $v.config }}
    {{- with include "safety-monitor.cacheEnv" $root | trim }}{{ nindent 4 . }}{{- end }}
    {{- end }}
    {{- with $v.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    httpGet:
      path: /healthz
      port: monitor
    {{- toYaml $v.sidecar.startupProbe | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: monitor
    {{- toYaml $v.sidecar.livenessProbe | nindent 4 }}
  {{- if $v.failClosed }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: monitor
    {{- toYaml $v.sidecar.readinessProbe | nindent 4 }}
  {{- end }}
  {{- if and (not .native) (gt (int $v.sidecar.legacyPreStopSleepSeconds) 0) }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", {{ $v.sidecar.legacyPreStopSleepSeconds | toString | quote }}]
  {{- end }}
  resources:
    {{- toYaml $v.sidecar.resources | nindent 4 }}
  securityContext:
    {{- include "safety-monitor.containerSecurityContext" (dict "root" $root "override" $v.sidecar.securityContext) | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: {{ include "safety-monitor.configDir" $root }}
      readOnly: true
    - name: sidecar-tmp
      mountPath: /tmp
    - name: outbox
      mountPath: {{ include "safety-monitor.outboxDir" $root }}
    {{- with include "safety-monitor.saeVolumeMount" $root | trim }}{{ nindent 4 . }}{{- end }}
    {{- if include "safety-monitor.detectorsConfigMap" $root }}
    - name: detectors
      mountPath: {{ include "safety-monitor.detectorsDir" $root }}
      readOnly: true
    {{- end }}
    {{- if dig "model" "load" false $v.config }}
    {{- with include "safety-monitor.cacheMount" $root | trim }}{{ nindent 4 . }}{{- end }}
    {{- end }}
    {{- with include "safety-monitor.tlsVolumeMounts" $root | trim }}{{ nindent 4 . }}{{- end }}
    {{- with $v.sidecar.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "safety-monitor.modelServerContainer" -}}
{{- $v := .Values -}}
{{- $ms := $v.modelServer -}}
- name: model-server
  image: {{ include "safety-monitor.image" (dict "image" $ms.image "root" .) | quote }}
  imagePullPolicy: {{ include "safety-monitor.pullPolicy" (dict "image" $ms.image "root" .) }}
  {{- if $ms.command }}
  command: {{ toJson $ms.command }}
  {{- else }}
  command: ["safety-monitor", "model-server", "--config", {{ include "safety-monitor.settingsFile" . | quote }}]
  {{- end }}
  {{- with $ms.args }}
  args: {{ toJson . }}
  {{- end }}
  ports:
    - name: http
      containerPort: {{ $ms.port }}
      protocol: TCP
  {{- $env := list }}
  {{- if $ms.injectTokens }}{{ $env = concat $env (include "safety-monitor.tokenEnv" . | fromYamlArray) }}{{ end }}
  {{- $env = concat $env (include "safety-monitor.cacheEnv" . | fromYamlArray) $ms.extraEnv }}
  {{- with $env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  startupProbe:
    {{- toYaml (default (dict "httpGet" (dict "path" "/healthz" "port" "http") "periodSeconds" 2 "timeoutSeconds" 2 "failureThreshold" 90) $ms.startupProbe) | nindent 4 }}
  readinessProbe:
    {{- toYaml (default (dict "httpGet" (dict "path" "/healthz" "port" "http") "periodSeconds" 5 "timeoutSeconds" 3 "failureThreshold" 2) $ms.readinessProbe) | nindent 4 }}
  livenessProbe:
    {{- toYaml (default (dict "httpGet" (dict "path" "/healthz" "port" "http") "periodSeconds" 10 "timeoutSeconds" 5 "failureThreshold" 3) $ms.livenessProbe) | nindent 4 }}
  resources:
    {{- toYaml $ms.resources | nindent 4 }}
  securityContext:
    {{- include "safety-monitor.containerSecurityContext" (dict "root" . "override" $ms.securityContext) | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: {{ include "safety-monitor.configDir" . }}
      readOnly: true
    - name: model-server-tmp
      mountPath: /tmp
    {{- if $ms.encodeAtTap }}
    {{- /* it loads the SAE slice and the detector specs as the sidecar does */}}
    {{- with include "safety-monitor.saeVolumeMount" . | trim }}{{ nindent 4 . }}{{- end }}
    {{- if include "safety-monitor.detectorsConfigMap" . }}
    - name: detectors
      mountPath: {{ include "safety-monitor.detectorsDir" . }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- with include "safety-monitor.cacheMount" . | trim }}{{ nindent 4 . }}{{- end }}
    {{- with $ms.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The pod template (metadata + spec) of the model-server workload. */}}
{{- define "safety-monitor.podTemplate" -}}
{{- $native := include "safety-monitor.nativeSidecar" . -}}
{{- $v := .Values -}}
metadata:
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- if $v.detectors.specs }}
    checksum/detectors: {{ include (print $.Template.BasePath "/detectors-configmap.yaml") . | sha256sum }}
    {{- end }}
    safety-monitor.io/sidecar-form: {{ ternary "native" "regular" (eq $native "true") }}
    safety-monitor.io/fail-closed: {{ $v.failClosed | quote }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "safety-monitor.labels" . | nindent 4 }}
    app.kubernetes.io/component: model-server
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "safety-monitor.serviceAccountName" . }}
  automountServiceAccountToken: false
  # Service links would inject <SERVICE>_PORT=tcp://... variables; a Service whose name starts with
  # "safety-monitor" would put them in the SAFETY_MONITOR_* namespace the settings read.
  enableServiceLinks: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- if or $native (eq $v.sae.source "initContainer") }}
  initContainers:
    {{- with include "safety-monitor.saeInitContainer" . | trim }}{{ nindent 4 . }}{{- end }}
    {{- if $native }}
    {{- include "safety-monitor.sidecarContainer" (dict "root" . "native" true) | nindent 4 }}
    {{- end }}
  {{- end }}
  containers:
    {{- include "safety-monitor.modelServerContainer" . | nindent 4 }}
    {{- if not $native }}
    {{- include "safety-monitor.sidecarContainer" (dict "root" . "native" false) | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "safety-monitor.fullname" . }}
    {{- include "safety-monitor.tmpVolume" (dict "name" "sidecar-tmp" "root" .) | nindent 4 }}
    {{- include "safety-monitor.tmpVolume" (dict "name" "model-server-tmp" "root" .) | nindent 4 }}
    {{- if eq $v.sae.source "initContainer" }}
    {{- include "safety-monitor.tmpVolume" (dict "name" "fetch-sae-tmp" "root" .) | nindent 4 }}
    {{- end }}
    {{- if not (and (eq $v.mode "statefulset") $v.outbox.persistence.enabled) }}
    - name: outbox
      {{- if $v.outbox.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ $v.outbox.persistence.existingClaim | quote }}
      {{- else }}
      emptyDir:
        {{- with $v.outbox.emptyDir.medium }}
        medium: {{ . }}
        {{- end }}
        sizeLimit: {{ $v.outbox.emptyDir.sizeLimit }}
      {{- end }}
    {{- end }}
    {{- with include "safety-monitor.saeVolume" . | trim }}{{ nindent 4 . }}{{- end }}
    {{- with include "safety-monitor.detectorsConfigMap" . }}
    - name: detectors
      configMap:
        name: {{ . }}
    {{- end }}
    {{- with include "safety-monitor.cacheVolume" . | trim }}{{ nindent 4 . }}{{- end }}
    {{- with include "safety-monitor.tlsVolumes" . | trim }}{{ nindent 4 . }}{{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
