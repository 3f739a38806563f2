{{/*
One model service: a KServe InferenceService whose custom predictor container (kserve-container)
runs `parrot serve <name>` from our image, and a ClusterIP Service over its pods with the ports
`grpc` (parrot.v1 + grpc.health.v1) and `http` (KServe REST, /metrics): the stable address the
coordinator uses in RawDeployment mode and what the ServiceMonitor scrapes.
Settings are .Values.<name>; shared ones are at the top level of the values.
Call with (dict "root" $ "name" "asker").
*/}}

{{/* Settings passed to `parrot serve` as PARROT_<SETTING> (value key in camelCase = flag in kebab-case): every
setting of the backends this chart offers (the backends' settings dataclasses, parrot/backends/flags.py), less the
API key's file and env (judge.external.apiKeySecret), plus --backend and --max-new-tokens;
tests/deploy/test_chart.py holds this list to those. Empty or null: not set, the backend's default. */}}
{{- define "parrot.modelSettings" -}}
model backend dtype device maxBatchSize batchWaitMs maxQueue numThreads prefixCacheMib prefillChunkTokens maxNewTokens baseUrl timeoutS maxRetries backoffInitialS backoffMaxS upstreamConcurrency engineTokenizer engineScoring engineWaitS topLogprobs
{{- end }}

{{- define "parrot.modelService" -}}
{{- $root := .root }}
{{- $name := .name }}
{{- $values := $root.Values }}
{{- $svc := index $values $name }}
{{- $fullname := include "parrot.componentName" (dict "root" $root "component" $name) }}
{{- $ctx := dict "root" $root "component" $name }}
{{- $serverless := include "parrot.serverless" $root }}
{{- $kn := $values.kserve.knativeFeatures }}
{{- /* KServe's webhook: HPA metrics in RawDeployment/Standard, Knative's in Serverless/Knative */}}
{{- $scaleMetric := default (ternary "concurrency" "cpu" (not (empty $serverless))) $svc.scaleMetric }}
{{- if and $serverless (not (has $scaleMetric (list "concurrency" "rps"))) }}
{{- fail (printf "%s.scaleMetric %s: KServe accepts only concurrency or rps in Serverless (Knative) mode" $name $scaleMetric) }}
{{- end }}
{{- if and (not $serverless) (not (has $scaleMetric (list "cpu" "memory"))) }}
{{- fail (printf "%s.scaleMetric %s: KServe accepts only cpu or memory in RawDeployment (Standard) mode" $name $scaleMetric) }}
{{- end }}
{{- /* Knative drops pod fields it does not know unless their feature flag is on: refuse rather than lose them */}}
{{- if $serverless }}
{{- range $field := list (list "nodeSelector" "podspecNodeSelector" "kubernetes.podspec-nodeselector") (list "tolerations" "podspecTolerations" "kubernetes.podspec-tolerations") (list "affinity" "podspecAffinity" "kubernetes.podspec-affinity") }}
{{- if and (default (index $values (index $field 0)) (index $svc (index $field 0))) (not (index $kn (index $field 1))) }}
{{- fail (printf "%s: %s in Serverless mode needs Knative's %s feature flag; enable it in knative-serving/config-features and set kserve.knativeFeatures.%s=true" $name (index $field 0) (index $field 2) (index $field 1)) }}
{{- end }}
{{- end }}
{{- if and $svc.vllm.enabled (not $kn.multiContainerProbing) }}
{{- fail (printf "%s.vllm in Serverless mode: the sidecar's probes need Knative's multi-container-probing feature flag; enable it and set kserve.knativeFeatures.multiContainerProbing=true" $name) }}
{{- end }}
{{- end }}
{{- $podSecurityContext := or (not $serverless) $kn.podspecSecurityContext }}
{{- if eq (int $values.ports.grpc) (int $values.ports.http) }}
{{- fail "ports.grpc and ports.http must differ" }}
{{- end }}
{{- /* the settings as given, then what the TGI / external-judge / storageUri options imply */}}
{{- $settings := dict }}
{{- range $key := splitList " " (include "parrot.modelSettings" .) }}
{{- $_ := set $settings $key (index $svc $key) }}
{{- end }}
{{- $apiKeySecret := dict }}
{{- if and (eq $name "responder") $svc.tgi.enabled }}
{{- $_ := set $settings "backend" "tgi" }}
{{- $_ := set $settings "baseUrl" (printf "http://%s:%d" (include "parrot.componentName" (dict "root" $root "component" "tgi")) (int $svc.tgi.port)) }}
{{- $_ := set $settings "model" $svc.tgi.modelId }}
{{- end }}
{{- if and (eq $name "judge") $svc.external.enabled }}
{{- $_ := set $settings "backend" "openai" }}
{{- $_ := set $settings "baseUrl" (required "judge.external.baseUrl is required" $svc.external.baseUrl) }}
{{- $_ := set $settings "model" (required "judge.external.model is required" $svc.external.model) }}
{{- $apiKeySecret = $svc.external.apiKeySecret }}
{{- if not $apiKeySecret.name }}
{{- fail "judge.external.apiKeySecret.name is required: a Secret holding the judge API key" }}
{{- end }}
{{- end }}
{{- if $svc.storageUri }}
{{- $_ := set $settings "model" "/mnt/models" }}
{{- end }}
{{- $vllm := $svc.vllm }}
{{- if $vllm.enabled }}
{{- if and (eq $name "responder") $svc.tgi.enabled }}
{{- fail "responder.vllm.enabled and responder.tgi.enabled: pick one engine" }}
{{- end }}
{{- if $svc.storageUri }}
{{- fail (printf "%s.vllm.enabled: the vLLM sidecar does not see %s.storageUri's /mnt/models; name the model in %s.vllm.model (a Hugging Face id or a path in the vLLM image)" $name $name $name) }}
{{- end }}
{{- $_ := set $settings "backend" "engine" }}
{{- $_ := set $settings "baseUrl" (printf "http://127.0.0.1:%d/v1" (int $vllm.port)) }}
{{- $_ := set $settings "model" $name }}
{{- /* prompts are rendered with the served model's chat template (tokenizer downloaded to /tmp) */}}
{{- $_ := set $settings "engineTokenizer" $vllm.model }}
{{- /* wait for the vLLM sidecar to load its model before failing */}}
{{- if kindIs "invalid" $svc.engineWaitS }}
{{- $_ := set $settings "engineWaitS" 1800 }}
{{- end }}
{{- end }}
{{- if and (ne $settings.backend "transformers") (not $settings.baseUrl) }}
{{- fail (printf "%s.baseUrl is required for backend %s" $name $settings.backend) }}
{{- end }}
{{- /* env may not repeat what the chart sets: a setting the values give, and these */}}
{{- $reserved := list "PARROT_GRPC_PORT" "PARROT_HTTP_PORT" "PARROT_AUTH_TOKEN_FILE" "PARROT_API_KEY_FILE" "STORAGE_URI" "PARROT_ENGINE_TOKENIZER" "PARROT_ENGINE_WAIT_S" "PARROT_BASE_URL" "HF_HOME" }}
{{- range $key := keys $settings }}
{{- $value := index $settings $key }}
{{- if or $value (kindIs "float64" $value) (kindIs "int64" $value) }}
{{- $reserved = append $reserved (printf "PARROT_%s" ($key | snakecase | upper)) }}
{{- end }}
{{- end }}
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parrot.labels" $ctx | nindent 4 }}
  annotations:
    serving.kserve.io/deploymentMode: {{ include "parrot.kserveMode" $root }}
    {{- if $serverless }}
    # Knative: KServe points prometheus.io/port at queue-proxy; with aggregation on, queue-proxy
    # serves the model's own metrics beside its own there
    serving.kserve.io/enable-prometheus-scraping: "true"
    serving.kserve.io/enable-metric-aggregation: "true"
    {{- end }}
    {{- with $values.kserve.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  predictor:
    minReplicas: {{ $svc.minReplicas }}
    maxReplicas: {{ $svc.maxReplicas }}
    {{- if gt (int $svc.minReplicas) (int $svc.maxReplicas) }}
    {{- fail (printf "%s.minReplicas (%d) is above %s.maxReplicas (%d)" $name (int $svc.minReplicas) $name (int $svc.maxReplicas)) }}
    {{- end }}
    scaleMetric: {{ $scaleMetric }}
    scaleTarget: {{ $svc.scaleTarget }}
    labels:
      {{- include "parrot.labels" $ctx | nindent 6 }}
    {{- with include "parrot.podAnnotations" (dict "root" $root "port" $values.ports.http) }}
    annotations:
      {{- . | nindent 6 }}
    {{- end }}
    serviceAccountName: {{ default (include "parrot.componentName" (dict "root" $root "component" "models")) $values.kserve.serviceAccountName }}
    # The model services never call the Kubernetes API.
    automountServiceAccountToken: false
    enableServiceLinks: false
    {{- if not $serverless }}
    # (Knative refuses this field and always gives its pods their own grace period)
    terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
    {{- end }}
    {{- if $podSecurityContext }}
    securityContext:
      {{- include "parrot.podSecurityContext" $root | nindent 6 }}
    {{- end }}
    {{- with $values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      # KServe's name for the predictor container (its storage initializer and ports attach to it)
      - name: kserve-container
        image: {{ include "parrot.image" $root | quote }}
        imagePullPolicy: {{ $values.image.pullPolicy }}
        command: ["parrot"]
        args: ["serve", {{ $name | quote }}]
        ports:
          # KServe's port names: h2c = gRPC, http1 = HTTP/1.1; Knative routes a single port (gRPC)
          - name: h2c
            containerPort: {{ $values.ports.grpc }}
            protocol: TCP
          {{- if not $serverless }}
          - name: http1
            containerPort: {{ $values.ports.http }}
            protocol: TCP
          {{- end }}
        env:
          - name: PARROT_GRPC_PORT
            value: {{ $values.ports.grpc | toString | quote }}
          - name: PARROT_HTTP_PORT
            value: {{ $values.ports.http | toString | quote }}
          {{- range $key := splitList " " (include "parrot.modelSettings" $) }}
          {{- $value := index $settings $key }}
          {{- if or $value (kindIs "float64" $value) (kindIs "int64" $value) }}
          - name: {{ printf "PARROT_%s" ($key | snakecase | upper) }}
            value: {{ $value | toString | quote }}
          {{- end }}
          {{- end }}
          {{- if $svc.storageUri }}
          # KServe's storage initializer downloads this to /mnt/models before the container starts
          - name: STORAGE_URI
            value: {{ $svc.storageUri | quote }}
          {{- end }}
          {{- if $apiKeySecret.name }}
          - name: PARROT_API_KEY_FILE
            value: /var/run/secrets/parrot/api-key/key
          {{- end }}
          {{- if $vllm.enabled }}
          - name: HF_HOME
            value: /tmp/hf
          {{- if $vllm.hfTokenSecret }}
          - name: HF_TOKEN
            valueFrom:
              secretKeyRef:
                name: {{ $vllm.hfTokenSecret }}
                key: HF_TOKEN
          {{- end }}
          {{- end }}
          {{- with (include "parrot.authEnv" $root) }}{{ . | trim | nindent 10 }}{{ end }}
          {{- with (include "parrot.plainEnv" (dict "root" $root "env" $svc.env "reserved" $reserved "owner" $name)) }}{{ . | trim | nindent 10 }}{{ end }}
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
          {{- if $serverless }}
          grpc:
            port: {{ $values.ports.grpc }}
            service: {{ printf "parrot.v1.%s" (title $name) }}
          {{- else }}
          httpGet:
            path: /v2/health/ready
            port: http1
          {{- end }}
          periodSeconds: {{ $values.probes.readiness.periodSeconds }}
          timeoutSeconds: {{ $values.probes.readiness.timeoutSeconds }}
          failureThreshold: {{ $values.probes.readiness.failureThreshold }}
        securityContext:
          {{- include (ternary "parrot.containerSecurityContext" "parrot.knativeContainerSecurityContext" $podSecurityContext) $root | nindent 10 }}
        resources:
          {{- required (printf "%s.resources is required" $name) $svc.resources | toYaml | nindent 10 }}
        volumeMounts:
          - name: tmp
            mountPath: /tmp
          {{- with (include "parrot.authMount" $root) }}{{ . | trim | nindent 10 }}{{ end }}
          {{- if $apiKeySecret.name }}
          - name: api-key
            mountPath: /var/run/secrets/parrot/api-key
            readOnly: true
          {{- end }}
      {{- if $vllm.enabled }}
      # The engine: vLLM's OpenAI-compatible server on the pod's loopback, with logprobs for the judge's
      # probability-weighted score and prefix caching for later turns. No ports: only the parrot
      # container is reached from outside (Knative allows one serving container).
      - name: vllm
        image: {{ $vllm.image | quote }}
        imagePullPolicy: IfNotPresent
        args:
          - --model
          - {{ $vllm.model | quote }}
          - --served-model-name
          - {{ $name | quote }}
          - --host
          - "127.0.0.1"
          - --port
          - {{ $vllm.port | toString | quote }}
          - --max-logprobs
          - "20"
          - --enable-prefix-caching
          {{- range $vllm.extraArgs }}
          - {{ . | quote }}
          {{- end }}
        env:
          - name: HOME
            value: /cache
          - name: HF_HOME
            value: /cache/hf
          {{- if $vllm.hfTokenSecret }}
          - name: HF_TOKEN
            valueFrom:
              secretKeyRef:
                name: {{ $vllm.hfTokenSecret }}
                key: HF_TOKEN
          {{- end }}
        # Serverless (Knative) needs its multi-container-probing feature flag for these probes.
        startupProbe:
          httpGet:
            path: /health
            port: {{ $vllm.port }}
          periodSeconds: 10
          failureThreshold: 180
        livenessProbe:
          httpGet:
            path: /health
            port: {{ $vllm.port }}
          periodSeconds: 15
          timeoutSeconds: 5
          failureThreshold: 4
        readinessProbe:
          httpGet:
            path: /health
            port: {{ $vllm.port }}
          periodSeconds: 10
          timeoutSeconds: 5
          failureThreshold: 3
        securityContext:
          {{- include (ternary "parrot.containerSecurityContext" "parrot.knativeContainerSecurityContext" $podSecurityContext) $root | nindent 10 }}
        resources:
          {{- toYaml $vllm.resources | nindent 10 }}
        volumeMounts:
          - name: tmp
            mountPath: /tmp
          - name: vllm-cache
            mountPath: /cache
      {{- end }}
    volumes:
      - name: tmp
        emptyDir:
          sizeLimit: {{ $values.tmpSizeLimit }}
      {{- if $vllm.enabled }}
      - name: vllm-cache
        emptyDir:
          sizeLimit: {{ $vllm.cacheSizeLimit }}
      {{- end }}
      {{- with (include "parrot.authVolume" $root) }}{{ . | trim | nindent 6 }}{{ end }}
      {{- if $apiKeySecret.name }}
      - name: api-key
        secret:
          secretName: {{ $apiKeySecret.name }}
          items:
            - key: {{ $apiKeySecret.key }}
              path: key
          defaultMode: 0440
      {{- end }}
    {{- with (include "parrot.scheduling" (dict "root" $root "values" $svc)) }}{{ . | trim | nindent 4 }}{{ end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parrot.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "parrot.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $values.ports.grpc }}
      targetPort: {{ $values.ports.grpc }}
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    - name: http
      port: {{ $values.ports.http }}
      targetPort: {{ $values.ports.http }}
      protocol: TCP
{{- end }}
