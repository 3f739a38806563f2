{{/*
One model service: a Deployment running `parrot serve <name>` and a Service with the ports
`grpc` (parrot.v1 + grpc.health.v1) and `http` (KServe REST, /metrics).
Its settings are .Values.<name>; shared ones are at the top level of the values.
Call with (dict "root" $ "name" "asker").
*/}}
{{- define "parrot.modelService" -}}
{{- $root := .root }}
{{- $name := .name }}
{{- $svc := index $root.Values $name }}
{{- $values := $root.Values }}
{{- $fullname := printf "%s-%s" (include "parrot.fullname" $root) $name }}
{{- $ctx := dict "root" $root "component" $name }}
{{- $env := merge (dict) (default (dict) $svc.env) (default (dict) $values.env) }}
{{- range $key := list "PARROT_GRPC_PORT" "PARROT_HTTP_PORT" "PARROT_MODEL" "PARROT_BACKEND" "PARROT_AUTH_TOKEN_FILE" }}
{{- if hasKey $env $key }}
{{- fail (printf "env %s is set by the chart (ports.*, %s.model, %s.backend, auth.*); remove it from env / %s.env" $key $name $name $name) }}
{{- end }}
{{- end }}
{{- if eq (int $values.ports.grpc) (int $values.ports.http) }}
{{- fail "ports.grpc and ports.http must differ" }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parrot.labels" $ctx | nindent 4 }}
spec:
  replicas: {{ $svc.replicas }}
  selector:
    matchLabels:
      {{- include "parrot.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "parrot.labels" $ctx | nindent 8 }}
      {{- $annotations := deepCopy (default (dict) $values.podAnnotations) }}
      {{- if $values.metrics.scrapeAnnotations }}
      {{- $_ := set $annotations "prometheus.io/scrape" "true" }}
      {{- $_ := set $annotations "prometheus.io/port" (toString $values.ports.http) }}
      {{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
      {{- end }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      # The model services never call the Kubernetes API.
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        runAsGroup: 1000
        # makes the mounted auth token readable by the process (group 1000)
        fsGroup: 1000
        seccompProfile:
          type: RuntimeDefault
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "parrot.image" $root | quote }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          command: ["parrot"]
          args: ["serve", {{ $name | quote }}]
          ports:
            - name: grpc
              containerPort: {{ $values.ports.grpc }}
              protocol: TCP
            - name: http
              containerPort: {{ $values.ports.http }}
              protocol: TCP
          env:
            - name: PARROT_GRPC_PORT
              value: {{ $values.ports.grpc | toString | quote }}
            - name: PARROT_HTTP_PORT
              value: {{ $values.ports.http | toString | quote }}
            - name: PARROT_MODEL
              value: {{ required (printf "%s.model is required" $name) $svc.model | toString | quote }}
            - name: PARROT_BACKEND
              value: {{ required (printf "%s.backend is required" $name) $svc.backend | toString | quote }}
            {{- if $values.auth.existingSecret }}
            - name: PARROT_AUTH_TOKEN_FILE
              value: {{ include "parrot.authTokenFile" $root | quote }}
            {{- end }}
            {{- range $key, $value := $env }}
            - name: {{ $key }}
              value: {{ $value | toString | quote }}
            {{- end }}
          startupProbe:
            grpc:
              port: {{ $values.ports.grpc }}
            periodSeconds: {{ $values.probes.startup.periodSeconds }}
            failureThreshold: {{ $values.probes.startup.failureThreshold }}
          livenessProbe:
            grpc:
              port: {{ $values.ports.grpc }}
            periodSeconds: {{ $values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $values.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: {{ $values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $values.probes.readiness.failureThreshold }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            capabilities:
              drop: ["ALL"]
          resources:
            {{- required (printf "%s.resources is required" $name) $svc.resources | toYaml | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $values.auth.existingSecret }}
            - name: auth-token
              mountPath: {{ include "parrot.authDir" $root }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $values.tmpSizeLimit }}
        {{- if $values.auth.existingSecret }}
        - name: auth-token
          secret:
            secretName: {{ $values.auth.existingSecret }}
            items:
              - key: {{ $values.auth.secretKey }}
                path: token
            defaultMode: 0440
        {{- end }}
      {{- with (default $values.nodeSelector $svc.nodeSelector) }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (default $values.tolerations $svc.tolerations) }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (default $values.affinity $svc.affinity) }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parrot.labels" $ctx | nindent 4 }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "parrot.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
    - name: http
      port: {{ $values.ports.http }}
      targetPort: http
      protocol: TCP
{{- end }}
