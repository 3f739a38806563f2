{{/* Chart name, overridable by nameOverride. */}}
{{- define "parrot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release-scoped base name for every object: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart>". 52 characters leave room for the
"-<service>" suffixes within DNS-label limits.
*/}}
{{- define "parrot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "parrot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component. Call with (dict "root" $ "component" "asker"). */}}
{{- define "parrot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parrot.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Common labels of one component. Call with (dict "root" $ "component" "asker"). */}}
{{- define "parrot.labels" -}}
helm.sh/chart: {{ include "parrot.chart" .root }}
{{ include "parrot.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: parrot
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* The image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "parrot.image" -}}
{{- with .Values.image }}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag | toString) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the auth token Secret is mounted, and the token file in it. */}}
{{- define "parrot.authDir" -}}
/var/run/secrets/parrot/auth
{{- end }}
{{- define "parrot.authTokenFile" -}}
{{ include "parrot.authDir" . }}/token
{{- end }}

{{/* Name of one component's objects: "<fullname>-<component>". Call with (dict "root" $ "component" "asker"). */}}
{{- define "parrot.componentName" -}}
{{- printf "%s-%s" (include "parrot.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The pod security context of every pod the chart runs: uid/gid 1000, non-root, RuntimeDefault seccomp. */}}
{{- define "parrot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
# makes mounted Secrets and volumes readable by the process (group 1000)
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container security context of every container: read-only root, no privilege escalation, no capabilities. */}}
{{- define "parrot.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
The container security context of a Knative pod without kubernetes.podspec-securitycontext: Knative
refuses the pod-level one, so its user, group and seccomp profile go on the container (allowed).
*/}}
{{- define "parrot.knativeContainerSecurityContext" -}}
{{ include "parrot.containerSecurityContext" . }}
runAsUser: 1000
runAsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Plain env of a parrot container: .Values.env merged with the component's own env (which wins),
refusing names in "reserved" (set by the chart from other values).
Call with (dict "root" $ "env" .Values.asker.env "reserved" (list ...) "owner" "asker").
*/}}
{{- define "parrot.plainEnv" -}}
{{- $env := merge (dict) (default (dict) .env) (default (dict) .root.Values.env) }}
{{- range $key := .reserved }}
{{- if hasKey $env $key }}
{{- fail (printf "env %s is set by the chart from the %s values; remove it from env / %s.env" $key $.owner $.owner) }}
{{- end }}
{{- end }}
{{- range $key, $value := $env }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Env holding the parrot.v1 bearer token file, when auth.existingSecret is set. */}}
{{- define "parrot.authEnv" -}}
{{- if .Values.auth.existingSecret }}
- name: PARROT_AUTH_TOKEN_FILE
  value: {{ include "parrot.authTokenFile" . | quote }}
{{- end }}
{{- end }}

{{/* Volume mount and volume of the auth token Secret (empty when auth is off). */}}
{{- define "parrot.authMount" -}}
{{- if .Values.auth.existingSecret }}
- name: auth-token
  mountPath: {{ include "parrot.authDir" . }}
  readOnly: true
{{- end }}
{{- end }}
{{- define "parrot.authVolume" -}}
{{- if .Values.auth.existingSecret }}
- name: auth-token
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    items:
      - key: {{ .Values.auth.secretKey }}
        path: token
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* true when the model services run under Knative (KServe Serverless / Knative mode). */}}
{{- define "parrot.serverless" -}}
{{- if has .Values.kserve.deploymentMode (list "Serverless" "Knative") }}true{{ end }}
{{- end }}

{{/*
The deployment-mode name the cluster's KServe accepts (kserve.version): RawDeployment / Serverless
before 0.16; Standard / Knative from 0.16 (0.16's webhook knows only these; 0.17+ also renames the old ones).
*/}}
{{- define "parrot.kserveMode" -}}
{{- $new := semverCompare ">=0.16-0" (printf "%s.0" .Values.kserve.version) }}
{{- if include "parrot.serverless" . }}{{ ternary "Knative" "Serverless" $new }}{{ else }}{{ ternary "Standard" "RawDeployment" $new }}{{ end }}
{{- end }}

{{/*
gRPC address of one model service for the coordinator and the CronJob: the chart's Service in
RawDeployment mode; Knative's cluster-local route of the predictor (port 80, h2c) in Serverless mode.
Call with (dict "root" $ "component" "responder").
*/}}
{{- define "parrot.modelAddress" -}}
{{- $name := include "parrot.componentName" . }}
{{- if include "parrot.serverless" .root }}
{{- printf "%s-predictor.%s.svc.cluster.local:80" $name .root.Release.Namespace }}
{{- else }}
{{- printf "%s:%d" $name (int .root.Values.ports.grpc) }}
{{- end }}
{{- end }}

{{/* The coordinator's gRPC address inside the cluster. */}}
{{- define "parrot.coordinatorAddress" -}}
{{- printf "%s:%d" (include "parrot.componentName" (dict "root" . "component" "coordinator")) (int .Values.coordinator.grpcPort) }}
{{- end }}

{{/* The object-store Secret (keys accessKey/secretKey, or the configured ones for external S3). */}}
{{- define "parrot.storeSecretName" -}}
{{- if .Values.store.external.enabled }}
{{- required "store.external.existingSecret is required when store.external.enabled" .Values.store.external.existingSecret }}
{{- else if .Values.minio.existingSecret }}
{{- .Values.minio.existingSecret }}
{{- else }}
{{- include "parrot.componentName" (dict "root" . "component" "store") }}
{{- end }}
{{- end }}

{{/* The S3 endpoint URL: the chart's MinIO or store.external.endpoint. */}}
{{- define "parrot.storeEndpoint" -}}
{{- if .Values.store.external.enabled }}
{{- required "store.external.endpoint is required when store.external.enabled" .Values.store.external.endpoint }}
{{- else }}
{{- printf "http://%s:9000" (include "parrot.componentName" (dict "root" . "component" "minio")) }}
{{- end }}
{{- end }}

{{/* PARROT_STORE_URL and the PARROT_S3_* settings the coordinator reads (parrot/storage/s3.py). */}}
{{- define "parrot.storeEnv" -}}
{{- if and (not .Values.store.external.enabled) (not .Values.minio.enabled) }}
{{- fail "no object store: enable minio (minio.enabled) or an external S3 (store.external.enabled)" }}
{{- end }}
{{- $accessKey := ternary .Values.store.external.accessKeyKey "accessKey" .Values.store.external.enabled }}
{{- $secretKey := ternary .Values.store.external.secretKeyKey "secretKey" .Values.store.external.enabled }}
- name: PARROT_STORE_URL
  value: {{ printf "s3://%s/%s" .Values.store.bucket (.Values.store.prefix | trimAll "/") | trimSuffix "/" | quote }}
- name: PARROT_S3_ENDPOINT
  value: {{ include "parrot.storeEndpoint" . | quote }}
- name: PARROT_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "parrot.storeSecretName" . }}
      key: {{ $accessKey }}
- name: PARROT_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "parrot.storeSecretName" . }}
      key: {{ $secretKey }}
{{- if and .Values.store.external.enabled .Values.store.external.region }}
- name: PARROT_S3_REGION
  value: {{ .Values.store.external.region | quote }}
{{- end }}
{{- if not .Values.store.external.enabled }}
# the bucket hook Job creates the buckets
- name: PARROT_S3_CREATE_BUCKET
  value: "0"
{{- end }}
{{- end }}

{{/* Scheduling of one component: its own non-empty nodeSelector/tolerations/affinity, else the top-level ones. */}}
{{- define "parrot.scheduling" -}}
{{- with (default .root.Values.nodeSelector .values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default .root.Values.tolerations .values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default .root.Values.affinity .values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod annotations: podAnnotations plus prometheus.io/* when monitoring.scrapeAnnotations. Call with (dict "root" $ "port" 8080 "path" "/metrics"). */}}
{{- define "parrot.podAnnotations" -}}
{{- $annotations := deepCopy (default (dict) .root.Values.podAnnotations) }}
{{- if .root.Values.monitoring.scrapeAnnotations }}
{{- $_ := set $annotations "prometheus.io/scrape" "true" }}
{{- $_ := set $annotations "prometheus.io/port" (toString .port) }}
{{- $_ := set $annotations "prometheus.io/path" (default "/metrics" .path) }}
{{- end }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}
