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
