{{/*
Every helper takes this chart's own scope. From an app chart that lists sendguard as a
dependency, that scope is `.Subcharts.sendguard` (or `.Subcharts.<alias>`), so the names,
values and checksums the app's pod gets are exactly the ones this chart's resources use.
*/}}

{{- define "sendguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sendguard.fullname" -}}
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

{{- define "sendguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sendguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sendguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sendguard.labels" -}}
helm.sh/chart: {{ include "sendguard.chart" . }}
{{ include "sendguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sendguard
{{- end }}

{{- define "sendguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sendguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sendguard.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "sendguard.redis.fullname" -}}
{{- printf "%s-redis" (include "sendguard.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "sendguard.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sendguard.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Fails the render on value combinations the schema cannot express. */}}
{{- define "sendguard.validate" -}}
{{- $v := .Values }}
{{- if and (eq $v.mode "standalone") (eq $v.redis.mode "embedded") (or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled) }}
{{- fail "sendguard: more than one replica needs a shared store; set redis.mode to external (or bundled, for trials)" }}
{{- end }}
{{- if and (eq $v.redis.mode "external") (not $v.redis.url) (not $v.existingSecret) }}
{{- fail "sendguard: redis.mode external needs redis.url, or existingSecret holding the URL under existingSecretKeys.redisUrl" }}
{{- end }}
{{- if and $v.redis.url (ne $v.redis.mode "external") }}
{{- fail "sendguard: redis.url is set but redis.mode is not external" }}
{{- end }}
{{- $needed := add $v.preStopSleepSeconds $v.shutdownGraceSeconds }}
{{- if and (not (kindIs "invalid" $v.terminationGracePeriodSeconds)) (le (int64 $v.terminationGracePeriodSeconds) (int64 $needed)) }}
{{- fail (printf "sendguard: terminationGracePeriodSeconds (%v) must be larger than preStopSleepSeconds + shutdownGraceSeconds (%v)" $v.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- if and $v.metrics.podMonitor.enabled (empty $v.metrics.podMonitor.selector) }}
{{- fail "sendguard: metrics.podMonitor.selector must select the app's pods" }}
{{- end }}
{{- end }}

{{/* "true" when the embedded store persists to a volume: standalone, redis.mode embedded,
persistence.enabled (empty otherwise). */}}
{{- define "sendguard.persistent" -}}
{{- $v := .Values }}
{{- if and (eq $v.mode "standalone") (eq $v.redis.mode "embedded") $v.persistence.enabled }}true{{ end }}
{{- end }}

{{- define "sendguard.pvcName" -}}
{{- default (printf "%s-data" (include "sendguard.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "sendguard.redis.pvcName" -}}
{{- default (printf "%s-data" (include "sendguard.redis.fullname" .)) .Values.redis.bundled.persistence.existingClaim }}
{{- end }}

{{/* A PersistentVolumeClaim's spec from a persistence value block. */}}
{{- define "sendguard.pvcSpec" -}}
accessModes:
  {{- toYaml .accessModes | nindent 2 }}
{{- if eq .storageClass "-" }}
storageClassName: ""
{{- else if .storageClass }}
storageClassName: {{ .storageClass | quote }}
{{- end }}
resources:
  requests:
    storage: {{ .size | quote }}
{{- end }}

{{/* The Redis ports sendguard's egress policy opens: networkPolicy.egress.redisPorts, else the
bundled Redis' port, else every port named in redis.url (6379 when none is). One per line. */}}
{{- define "sendguard.redis.egressPorts" -}}
{{- $v := .Values }}
{{- $ports := list }}
{{- if $v.networkPolicy.egress.redisPorts }}
{{- range $v.networkPolicy.egress.redisPorts }}{{ $ports = append $ports (int .) }}{{ end }}
{{- else if eq $v.redis.mode "bundled" }}
{{- $ports = list (int $v.redis.bundled.port) }}
{{- else if eq $v.redis.mode "external" }}
{{- range regexFindAll "[@/,][A-Za-z0-9._\\[\\]-]+:[0-9]+" $v.redis.url -1 }}
{{- $ports = append $ports (regexFind "[0-9]+$" . | int) }}
{{- end }}
{{- if not $ports }}{{ $ports = list 6379 }}{{ end }}
{{- end }}
{{- range ($ports | uniq) }}
{{ . }}
{{- end }}
{{- end }}

{{/* Seconds the pod needs to stop cleanly: preStop sleep + shutdown grace + 10 s margin. */}}
{{- define "sendguard.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add .Values.preStopSleepSeconds .Values.shutdownGraceSeconds 10 }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int64 }}
{{- end }}
{{- end }}

{{/* One env value: lists of strings comma-joined, other lists and maps as JSON, whole numbers
without an exponent. */}}
{{- define "sendguard.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- $strings := true }}
{{- range $v }}{{ if not (kindIs "string" .) }}{{ $strings = false }}{{ end }}{{ end }}
{{- if $strings }}{{ join "," $v }}{{ else }}{{ toJson $v }}{{ end }}
{{- else if kindIs "map" $v }}
{{- toJson $v }}
{{- else if and (kindIs "float64" $v) (eq ($v | int64 | float64) $v) }}
{{- $v | int64 }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/* The ConfigMap's data: every non-secret SENDGUARD_* setting. */}}
{{- define "sendguard.configData" -}}
{{- $v := .Values }}
{{- $bind := ternary $v.sidecar.proxyBindAddress "0.0.0.0" (eq $v.mode "sidecar") -}}
SENDGUARD_LISTEN: {{ printf "%s:%v" $bind (int $v.ports.proxy) | quote }}
SENDGUARD_ADMIN_LISTEN: {{ printf "0.0.0.0:%v" (int $v.ports.admin) | quote }}
SENDGUARD_SHUTDOWN_GRACE: {{ $v.shutdownGraceSeconds | int64 | toString | quote }}
{{- with $v.killSwitch }}
SENDGUARD_KILL_SWITCH: {{ join "," . | quote }}
{{- end }}
{{- if eq $v.redis.mode "bundled" }}
SENDGUARD_REDIS_URL: {{ printf "redis://%s:%v/0" (include "sendguard.redis.fullname" .) (int $v.redis.bundled.port) | quote }}
{{- end }}
{{- if $v.redis.cluster }}
SENDGUARD_REDIS_CLUSTER: "true"
{{- end }}
{{- if and (include "sendguard.persistent" .) (not $v.config.data_dir) }}
SENDGUARD_DATA_DIR: {{ $v.persistence.mountPath | quote }}
{{- end }}
{{- range $key, $value := $v.config }}
{{- if not (kindIs "invalid" $value) }}
{{ printf "SENDGUARD_%s" (upper $key) }}: {{ include "sendguard.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The chart-made Secret's data (base64), only for the secret values given. */}}
{{- define "sendguard.secretData" -}}
{{- $v := .Values }}
{{- $keys := $v.existingSecretKeys }}
{{- with $v.secrets.adminToken }}
{{ $keys.adminToken }}: {{ . | b64enc | quote }}
{{- end }}
{{- with $v.secrets.twilioAuthTokens }}
{{- $pairs := list }}
{{- range $sid, $token := . }}{{ $pairs = append $pairs (printf "%s=%s" $sid $token) }}{{ end }}
{{ $keys.twilioAuthTokens }}: {{ join "," $pairs | b64enc | quote }}
{{- end }}
{{- with $v.secrets.callbackSecret }}
{{ $keys.callbackSecret }}: {{ . | b64enc | quote }}
{{- end }}
{{- if and (eq $v.redis.mode "external") $v.redis.url }}
{{ $keys.redisUrl }}: {{ $v.redis.url | b64enc | quote }}
{{- end }}
{{- end }}

{{- define "sendguard.configMapName" -}}
{{- include "sendguard.fullname" . }}
{{- end }}

{{- define "sendguard.secretName" -}}
{{- include "sendguard.fullname" . }}
{{- end }}

{{/* Secret env entries: from the chart's Secret when the value is given, else (optional)
from existingSecret. */}}
{{- define "sendguard.secretEnv" -}}
{{- $v := .Values }}
{{- $given := dict
      "adminToken" $v.secrets.adminToken
      "twilioAuthTokens" (not (empty $v.secrets.twilioAuthTokens))
      "callbackSecret" $v.secrets.callbackSecret
      "redisUrl" (and (eq $v.redis.mode "external") $v.redis.url) }}
{{- $envs := dict
      "adminToken" "SENDGUARD_ADMIN_TOKEN"
      "twilioAuthTokens" "SENDGUARD_TWILIO_AUTH_TOKENS"
      "callbackSecret" "SENDGUARD_CALLBACK_SECRET"
      "redisUrl" "SENDGUARD_REDIS_URL" }}
{{- range $item := list "adminToken" "twilioAuthTokens" "callbackSecret" "redisUrl" }}
{{- $key := get $v.existingSecretKeys $item }}
{{- if get $given $item }}
- name: {{ get $envs $item }}
  valueFrom:
    secretKeyRef:
      name: {{ include "sendguard.secretName" $ }}
      key: {{ $key }}
{{- else if and $v.existingSecret (or (ne $item "redisUrl") (eq $v.redis.mode "external")) }}
- name: {{ get $envs $item }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.existingSecret }}
      key: {{ $key }}
      optional: {{ ne $item "redisUrl" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll the pods when the config or the chart's secret changes. */}}
{{- define "sendguard.checksumAnnotations" -}}
checksum/sendguard-config: {{ include "sendguard.configData" . | sha256sum }}
checksum/sendguard-secret: {{ include "sendguard.secretData" . | sha256sum }}
{{- end }}

{{/* The sendguard container (a list item). */}}
{{- define "sendguard.container" -}}
{{- $v := .Values -}}
- name: {{ $v.sidecar.containerName }}
  image: {{ include "sendguard.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: ["serve"]
  envFrom:
    - configMapRef:
        name: {{ include "sendguard.configMapName" . }}
  {{- $secretEnv := include "sendguard.secretEnv" . }}
  {{- if or $secretEnv $v.extraEnv }}
  env:
    {{- with $secretEnv }}
    {{- . | trim | nindent 4 }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  ports:
    - name: sg-proxy
      containerPort: {{ $v.ports.proxy }}
      protocol: TCP
    - name: sg-admin
      containerPort: {{ $v.ports.admin }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: sg-admin
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: sg-admin
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: sg-admin
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  {{- if gt (int $v.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ int $v.preStopSleepSeconds }}"]
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: sendguard-tmp
      mountPath: /tmp
    {{- if include "sendguard.persistent" . }}
    - name: sendguard-data
      mountPath: {{ $v.persistence.mountPath }}
    {{- end }}
{{- end }}

{{/* The volumes the container mounts (list items). */}}
{{- define "sendguard.volumes" -}}
- name: sendguard-tmp
  emptyDir:
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- if include "sendguard.persistent" . }}
- name: sendguard-data
  persistentVolumeClaim:
    claimName: {{ include "sendguard.pvcName" . }}
{{- end }}
{{- end }}

{{/*
Sidecar mode, for an app chart's pod template. With nativeSidecar the item carries
restartPolicy: Always and belongs under initContainers (first, so that the app's own init
containers can already send through it); without, under containers:

  {{- $sg := .Subcharts.sendguard }}
  metadata:
    annotations:
      {{- include "sendguard.sidecar.podAnnotations" $sg | nindent 8 }}
  spec:
    terminationGracePeriodSeconds: {{ include "sendguard.terminationGracePeriodSeconds" $sg }}
    {{- if $sg.Values.nativeSidecar }}
    initContainers:
      {{- include "sendguard.sidecar.container" $sg | nindent 8 }}
    {{- end }}
    containers:
      - name: app
        …
      {{- if not $sg.Values.nativeSidecar }}
      {{- include "sendguard.sidecar.container" $sg | nindent 8 }}
      {{- end }}
    volumes:
      {{- include "sendguard.sidecar.volumes" $sg | nindent 8 }}

The app reaches the proxy at http://127.0.0.1:<ports.proxy>.
*/}}
{{- define "sendguard.sidecar.container" -}}
{{- include "sendguard.validate" . }}
{{- if ne .Values.mode "sidecar" }}
{{- fail "sendguard: set mode: sidecar in the sendguard values to include the sidecar container" }}
{{- end }}
{{- include "sendguard.container" . }}
{{- if .Values.nativeSidecar }}
  restartPolicy: Always
{{- end }}
{{- end }}

{{- define "sendguard.sidecar.volumes" -}}
{{- include "sendguard.volumes" . }}
{{- end }}

{{- define "sendguard.sidecar.podAnnotations" -}}
{{- include "sendguard.checksumAnnotations" . }}
{{- end }}
