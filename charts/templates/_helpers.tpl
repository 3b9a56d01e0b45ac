{{- define "aads.fullname" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "aads.labels" -}}
app.kubernetes.io/name: aads
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aads
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* An image reference: repository@digest when a digest is pinned, else repository:tag
(tag defaults to the chart's appVersion). */}}
{{- define "aads.imageRef" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}{{- $name := index . 2 -}}
{{- $cluster := include "aads.cluster" $root | fromYaml -}}
{{- $repo := default (printf "%s/%s" $cluster.registry $name) $img.repository -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The cluster contract shared with the pipeline (config/cluster.yaml, linked as
files/cluster.yaml): the image registry, the pipeline's Secret and ConfigMap names. */}}
{{- define "aads.cluster" -}}
{{- .Files.Get "files/cluster.yaml" -}}
{{- end -}}

{{- define "aads.image" -}}
{{- include "aads.imageRef" (list .Values.image . "aads-serving") -}}
{{- end -}}

{{- define "aads.componentImage" -}}
{{- $cluster := include "aads.cluster" . | fromYaml -}}
{{- include "aads.imageRef" (list .Values.componentImage . $cluster.component_image) -}}
{{- end -}}

{{- define "aads.isvcAnnotations" -}}
serving.kserve.io/deploymentMode: {{ .Values.kserve.deploymentMode }}
{{- end -}}

{{/* A crop's name in Kubernetes object names (DNS-1123: no underscores). The crop key itself
(the platform spec's crop name, e.g. corn_maize) stays as it is everywhere else. */}}
{{- define "aads.cropDns" -}}
{{- . | replace "_" "-" -}}
{{- end -}}

{{/* URL of a crop's predictor inside the cluster (KServe names the service <isvc>-predictor). */}}
{{- define "aads.predictorUrl" -}}
{{- $root := index . 0 -}}{{- $crop := index . 1 -}}
{{- if eq $root.Values.adapters.mode "multi" -}}
{{- printf "http://%s-adapters-predictor.%s" (include "aads.fullname" $root) $root.Release.Namespace -}}
{{- else -}}
{{- printf "http://%s-%s-predictor.%s" (include "aads.fullname" $root) (include "aads.cropDns" $crop) $root.Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "aads.canaryUrl" -}}
{{- $root := index . 0 -}}{{- $crop := index . 1 -}}
{{- printf "http://%s-%s-canary-predictor.%s" (include "aads.fullname" $root) (include "aads.cropDns" $crop) $root.Release.Namespace -}}
{{- end -}}

{{- define "aads.resources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if gt (int (default 0 .gpus)) 0 -}}
{{- $_ := set $res "limits" (merge (default dict $res.limits) (dict "nvidia.com/gpu" (int .gpus))) -}}
{{- $_ := set $res "requests" (merge (default dict $res.requests) (dict "nvidia.com/gpu" (int .gpus))) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* The router is deployed once its model is named: router.enabled and router.storageUri. */}}
{{- define "aads.routerEnabled" -}}
{{- if and .Values.router.enabled .Values.router.storageUri }}true{{ end -}}
{{- end -}}

{{/* Names of the adapter InferenceServices (KServe labels their pods with them). */}}
{{- define "aads.adapterServices" -}}
{{- $names := list -}}
{{- if eq .Values.adapters.mode "multi" -}}
{{- if .Values.adapters.crops -}}
{{- $names = append $names (printf "%s-adapters" (include "aads.fullname" .)) -}}
{{- end -}}
{{- else -}}
{{- range $crop, $_ := .Values.adapters.crops -}}
{{- $names = append $names (printf "%s-%s" (include "aads.fullname" $) (include "aads.cropDns" $crop)) -}}
{{- end -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}

{{/* Every InferenceService only the router calls: the crops' (or the multi one), the split
canaries and the scouting service. */}}
{{- define "aads.allAdapterServices" -}}
{{- $names := fromJsonArray (include "aads.adapterServices" .) -}}
{{- if .Values.scouting.enabled -}}
{{- $names = append $names (printf "%s-scouting" (include "aads.fullname" .)) -}}
{{- end -}}
{{- range $crop, $c := .Values.adapters.crops -}}
{{- if include "aads.canaryBySplit" (list $ $c) -}}
{{- $names = append $names (printf "%s-%s-canary" (include "aads.fullname" $) (include "aads.cropDns" $crop)) -}}
{{- end -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}

{{/* The chart installs MinIO only when no external object store is named. */}}
{{- define "aads.minioEnabled" -}}
{{- if and .Values.minio.enabled (not .Values.objectStore.endpoint) }}true{{ end -}}
{{- end -}}

{{- define "aads.s3Endpoint" -}}
{{- if .Values.objectStore.endpoint -}}
{{- .Values.objectStore.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "%s-minio.%s.svc:9000" (include "aads.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- fail "objectStore.endpoint is empty and minio.enabled is false: name an S3 endpoint or enable the in-chart MinIO" -}}
{{- end -}}
{{- end -}}

{{- define "aads.s3UseHttps" -}}
{{- if and .Values.objectStore.useHttps .Values.objectStore.endpoint }}true{{ end -}}
{{- end -}}

{{/* The object store's endpoint as a URL (what boto3, MLflow and AWS_ENDPOINT_URL_S3 take). */}}
{{- define "aads.s3EndpointUrl" -}}
{{- printf "%s://%s" (ternary "https" "http" (not (not (include "aads.s3UseHttps" .)))) (include "aads.s3Endpoint" .) -}}
{{- end -}}

{{/* The Secret holding the object-store keys (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). */}}
{{- define "aads.s3SecretName" -}}
{{- default (printf "%s-s3" (include "aads.fullname" .)) .Values.objectStore.existingSecret -}}
{{- end -}}

{{/* The chart runs MLflow only when no external tracking server is named. */}}
{{- define "aads.mlflowEnabled" -}}
{{- if and .Values.mlflow.enabled (not .Values.mlflow.trackingUri) }}true{{ end -}}
{{- end -}}

{{- define "aads.trackingUri" -}}
{{- if .Values.mlflow.trackingUri -}}
{{- .Values.mlflow.trackingUri -}}
{{- else if .Values.mlflow.enabled -}}
{{- printf "http://%s-mlflow.%s.svc:5000" (include "aads.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* A crop's canary is a second InferenceService the router splits to, except in Knative
single mode, where KServe's canaryTrafficPercent splits between revisions. */}}
{{- define "aads.canaryBySplit" -}}
{{- $root := index . 0 -}}{{- $c := index . 1 -}}
{{- if and $c.canary (or (eq $root.Values.adapters.mode "multi") (ne $root.Values.kserve.deploymentMode "Knative")) }}true{{ end -}}
{{- end -}}

{{/* Keys for the object store, from the Secret every pod reads (never from values). The keys
are named after the environment variables they fill: one contract for chart and pipeline. */}}
{{- define "aads.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ include "aads.s3SecretName" . }}, key: AWS_ACCESS_KEY_ID, optional: true}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ include "aads.s3SecretName" . }}, key: AWS_SECRET_ACCESS_KEY, optional: true}}
{{- end -}}

{{/* The platform spec every server and job reads, as a dict: the platform spec shipped with the
chart (files/platform-spec.yaml, i.e. config/production.yaml), serving on whatever device the
pod has, the user's `spec` values over it, then where the predictors, canaries, object store
and MLflow are, filled in from the rest of the values. */}}
{{- define "aads.specDict" -}}
{{- $base := .Files.Get "files/platform-spec.yaml" | fromYaml -}}
{{- if not (include "aads.mlflowEnabled" .) -}}
{{- /* The shipped spec's artifact_store is the chart's own MLflow's; an external MLflow's
is only what the values say. */ -}}
{{- $_ := set $base "registry" (omit (default dict $base.registry) "artifact_store") -}}
{{- end -}}
{{- $auto := dict "device" "auto" "dtype" "auto" -}}
{{- $spec := mergeOverwrite (deepCopy $base) (dict "router" (deepCopy $auto) "adapter" (dict "backbone" (deepCopy $auto))) (deepCopy (default dict .Values.spec)) -}}
{{- $urls := dict -}}
{{- $canaries := dict -}}
{{- range $crop, $c := .Values.adapters.crops -}}
{{- $_ := set $urls $crop (include "aads.predictorUrl" (list $ $crop)) -}}
{{- if include "aads.canaryBySplit" (list $ $c) -}}
{{- $_ := set $canaries $crop (dict "url" (include "aads.canaryUrl" (list $ $crop)) "percent" $c.canary.trafficPercent "version" (default "" $c.canary.version)) -}}
{{- end -}}
{{- end -}}
{{- $serving := merge (dict "predictor_url_template" "") (default dict $spec.serving) -}}
{{- $_ := set $serving "predictor_urls" $urls -}}
{{- $_ := set $serving "canaries" $canaries -}}
{{- if .Values.scouting.enabled -}}
{{- $_ := set $serving "scouting_url" (printf "http://%s-scouting-predictor.%s" (include "aads.fullname" .) .Release.Namespace) -}}
{{- $_ := set $serving "scouting_default" .Values.scouting.default -}}
{{- end -}}
{{- $_ := set $spec "serving" $serving -}}
{{- $storage := dict "endpoint" (include "aads.s3Endpoint" .) "secure" (not (not (include "aads.s3UseHttps" .))) "region" .Values.objectStore.region "bucket" .Values.objectStore.bucket -}}
{{- $_ := set $spec "storage" (mergeOverwrite (default dict $spec.storage) $storage) -}}
{{- $registry := dict -}}
{{- with (include "aads.trackingUri" .) }}{{ $_ := set $registry "tracking_uri" . }}{{ end -}}
{{- if include "aads.mlflowEnabled" . -}}
{{- $_ := set $registry "artifact_store" (printf "s3://%s/%s" .Values.objectStore.bucket .Values.mlflow.artifactsPrefix) -}}
{{- end -}}
{{- $_ := set $spec "registry" (mergeOverwrite (default dict $spec.registry) $registry) -}}
{{- toYaml $spec -}}
{{- end -}}

{{/* Checksum of what a workload reads from the spec ConfigMap: changing it changes the pod
template, so Helm and Argo CD roll the pods. The router and scouting read the routing tables
(predictor URLs, canaries); adapter predictors do not, so a promotion or canary of one crop
does not restart every other crop's predictor. */}}
{{- define "aads.specChecksum" -}}
{{- include "aads.specDict" . | sha256sum -}}
{{- end -}}

{{- define "aads.adapterSpecChecksum" -}}
{{- $spec := include "aads.specDict" . | fromYaml -}}
{{- $serving := omit $spec.serving "predictor_urls" "canaries" "scouting_url" "scouting_default" -}}
{{- $_ := set $spec "serving" $serving -}}
{{- toYaml $spec | sha256sum -}}
{{- end -}}

{{/* Checksum of the object-store keys the pod reads (chart-generated keys: their value, kept
across upgrades; an existing Secret: its name, since its data lives outside the chart). */}}
{{- define "aads.s3SecretChecksum" -}}
{{- if .Values.objectStore.existingSecret -}}
{{- .Values.objectStore.existingSecret | sha256sum -}}
{{- else -}}
{{- include "aads.s3SecretData" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* The chart-made object-store keys: the existing Secret's data (upgrades keep them), else
new random keys for the in-chart MinIO. `lookup` sees the cluster only during `helm install`
and `helm upgrade`; `helm template` and Argo CD render without it, so GitOps installs name
`objectStore.existingSecret` (objectStore.generateKeys: false enforces it). Memoised per render
so every template sees the same keys. */}}
{{- define "aads.s3SecretData" -}}
{{- $cache := .Values.objectStore -}}
{{- if not (hasKey $cache "_generated") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-s3" (include "aads.fullname" .)) -}}
{{- if and $existing $existing.data -}}
{{- $_ := set $cache "_generated" (toYaml $existing.data) -}}
{{- else if include "aads.minioEnabled" . -}}
{{- $_ := set $cache "_generated" (toYaml (dict "AWS_ACCESS_KEY_ID" (printf "aads%s" (randAlphaNum 16 | lower) | b64enc) "AWS_SECRET_ACCESS_KEY" (randAlphaNum 40 | b64enc))) -}}
{{- else -}}
{{- $_ := set $cache "_generated" "" -}}
{{- end -}}
{{- end -}}
{{- $cache._generated -}}
{{- end -}}

{{/* ---------------------------------------------------------------- per-workload pods
Every workload (router, adapters, scouting, minio, mlflow, jobs, tests) has the same pod
settings: podAnnotations, podLabels, nodeSelector, tolerations, affinity,
topologySpreadConstraints, priorityClassName, imagePullSecrets (added to the global ones) and,
except tests, a serviceAccount block {create, name, annotations}. */}}

{{/* A workload's values by its key, dotted for a nested one (e.g. monitoring.drift). */}}
{{- define "aads.workloadValues" -}}
{{- $root := index . 0 -}}{{- $w := $root.Values -}}
{{- range (splitList "." (index . 1)) }}{{ $w = index $w . }}{{ end -}}
{{- toYaml $w -}}
{{- end -}}

{{/* The service account a workload's pods run as (a nested key's dots become dashes). */}}
{{- define "aads.serviceAccountName" -}}
{{- $root := index . 0 -}}{{- $key := index . 1 -}}
{{- $w := include "aads.workloadValues" (list $root $key) | fromYaml -}}
{{- $sa := default dict $w.serviceAccount -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "aads.fullname" $root) ($key | replace "." "-")) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* Pod-level fields of a workload, for a PodSpec or a KServe predictor. `api`: whether the
pod talks to the Kubernetes API (only then is a service-account token mounted). */}}
{{- define "aads.podSettings" -}}
{{- $root := .root -}}{{- $w := .w -}}
{{- $pullSecrets := concat (default list $root.Values.imagePullSecrets) (default list $w.imagePullSecrets) -}}
{{- with .serviceAccount }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: {{ default false .api }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $w.nodeSelector .nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $w.tolerations .tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $w.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Writable scratch for a read-only root filesystem: /tmp and the home folder's caches
(Hugging Face, the aads cache, matplotlib) on emptyDirs. */}}
{{- define "aads.scratchMounts" -}}
- {name: tmp, mountPath: /tmp}
- {name: cache, mountPath: /home/aads/.cache}
{{- end -}}

{{- define "aads.scratchVolumes" -}}
- name: tmp
  emptyDir: {sizeLimit: 1Gi}
- name: cache
  emptyDir: {sizeLimit: {{ default "10Gi" .cacheSize }}}
{{- end -}}

{{/* The spec ConfigMap as a volume folder. Mounted whole, never with subPath: the kubelet
updates a ConfigMap volume by swapping its ..data symlink, and subPath mounts never see that,
so the router and scouting could not reload a new spec. */}}
{{- define "aads.specVolume" -}}
- name: spec
  configMap:
    name: {{ include "aads.fullname" . }}-spec
{{- end -}}

{{- define "aads.specMount" -}}
- {name: spec, mountPath: /etc/aads, readOnly: true}
{{- end -}}

{{/* Liveness and readiness of a KServe ModelServer container (readiness stays false until the
model is loaded; the startup probe gives a large backbone time to load before liveness
counts). */}}
{{- define "aads.modelServerProbes" -}}
startupProbe:
  httpGet: {path: /v2/health/live, port: 8080}
  periodSeconds: 10
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /v2/health/live, port: 8080}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /v2/health/ready, port: 8080}
  periodSeconds: 5
  timeoutSeconds: 5
{{- end -}}

{{/* ---------------------------------------------------------------- monitoring */}}

{{/* Every InferenceService of this release Prometheus scrapes: the router and everything only
the router calls (adapters, split canaries, scouting). */}}
{{- define "aads.monitoredServices" -}}
{{- $names := fromJsonArray (include "aads.allAdapterServices" .) -}}
{{- if include "aads.routerEnabled" . -}}
{{- $names = prepend $names (printf "%s-router" (include "aads.fullname" .)) -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}

{{/* The crops the drift CronJobs check: monitoring.drift.crops, else every pinned crop. */}}
{{- define "aads.driftCrops" -}}
{{- default (keys .Values.adapters.crops | sortAlpha) .Values.monitoring.drift.crops | toJson -}}
{{- end -}}

{{- define "aads.driftEnabled" -}}
{{- if and .Values.monitoring.drift.enabled (fromJsonArray (include "aads.driftCrops" .)) }}true{{ end -}}
{{- end -}}
