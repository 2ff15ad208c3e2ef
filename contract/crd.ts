// The CRD, built in code so the schema sits next to the types; `node dist/scripts/generate-crd.js`
// writes crds/inferencesessions.torpor.dev.yaml and a test fails if the committed file is stale.
import { GROUP, KIND, MAX_CONTEXT_SIZE, MAX_SESSION_NAME_LENGTH, MIN_CONTEXT_SIZE, PLURAL, VERSION } from "./inference-session.js";

const str = (extra: Record<string, unknown> = {}) => ({ type: "string", ...extra });
const int = (extra: Record<string, unknown> = {}) => ({ type: "integer", format: "int64", ...extra });
const time = (description: string) => ({ type: "string", format: "date-time", description });
const d = (description: string) => ({ description });

const DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const SUB_PATH = "^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$";

export const specSchema = {
  type: "object",
  description: "The session the user wants: which model pool serves it, where its state should live, how it hibernates.",
  required: ["model"],
  properties: {
    model: str({
      minLength: 1, maxLength: 63, pattern: DNS_LABEL,
      description: "Runtime pool serving the session: runtime pods labelled torpor.dev/model=<model>. Immutable.",
      "x-kubernetes-validations": [{ rule: "self == oldSelf", message: "model is immutable: create a new session to change models" }],
    }),
    residency: str({ enum: ["InMemory", "Hibernated"], default: "InMemory", description: "Where the session's state should live." }),
    contextSize: int({ minimum: MIN_CONTEXT_SIZE, maximum: MAX_CONTEXT_SIZE, description: "Context window in tokens. Unset: the model pool's defaultContextSize (the chart's models[].defaultContextSize)." }),
    systemPrompt: str({ maxLength: 100000, description: "System message prepended to the conversation." }),
    hibernation: {
      type: "object",
      description: "When the session hibernates on its own, and where on the hibernation volume its files go.",
      properties: {
        idleAfter: str({ pattern: "^([0-9]+(ms|s|m|h))+$", maxLength: 32, description: "Hibernate after this long without requests (Go duration, e.g. 15m)." }),
        checkpoint: {
          type: "object",
          description: "Write the state between turns while InMemory, so a crash loses at most this much. Unset: the runtime pool's policy (the chart's checkpoint values, off by default); set, it replaces the pool's (interval: 0s and no afterTurns: none). Costs one state file per session on the volume.",
          properties: {
            afterTurns: int({ minimum: 1, maximum: 10000, description: "Checkpoint after this many turns." }),
            interval: str({ pattern: "^([0-9]+(ms|s|m|h))+$", maxLength: 32, description: "Checkpoint at most this long after an unsaved turn (Go duration)." }),
          },
        },
        path: str({
          maxLength: 512, pattern: SUB_PATH,
          description: "Sub-path inside the namespace's folder on the hibernation volume (per-tenant separation). Immutable.",
          "x-kubernetes-validations": [
            { rule: "!self.split('/').exists(s, s == '..')", message: "path must not contain '..': it must stay inside the hibernation volume" },
            { rule: "!self.startsWith('/')", message: "path must be relative to the hibernation volume" },
            { rule: "self == oldSelf", message: "path is immutable: hibernated files would be orphaned" },
          ],
        }),
      },
    },
  },
  // A property's own `self == oldSelf` rule runs only when the field exists on both sides: adding
  // or removing the path (or the whole hibernation block) is caught here.
  "x-kubernetes-validations": [{
    rule: "(has(self.hibernation) && has(self.hibernation.path) ? self.hibernation.path : '') == (has(oldSelf.hibernation) && has(oldSelf.hibernation.path) ? oldSelf.hibernation.path : '')",
    message: "hibernation.path is immutable (it cannot be added or removed either): hibernated files would be orphaned",
  }],
};

const condition = {
  type: "object",
  description: "One aspect of the session's state, as `kubectl wait --for=condition=<type>` reads it.",
  required: ["type", "status", "reason", "message", "lastTransitionTime"],
  properties: {
    type: str({ enum: ["Ready", "Hibernated", "Degraded"], description: "Ready: a runtime pod can serve the session (it is placed, and its state is not refused). Hibernated: its state is on the volume, not in memory (reason HandedOff: saved by the pod that held it as that pod went, and back in memory on its next pod). Degraded: something needs attention (reason and message say what)." }),
    status: str({ enum: ["True", "False", "Unknown"], description: "Whether the condition holds." }),
    reason: str({ maxLength: 1024, description: "Why, in one CamelCase word (InMemory, HandOff, HandedOff, SpecRefused, ChecksumMismatch, LiveStateLost, ...)." }),
    message: str({ maxLength: 32768, description: "Why, for a person." }),
    lastTransitionTime: time("When status last changed."),
    observedGeneration: int({ minimum: 0, description: "The metadata.generation this condition was computed from." }),
  },
};

export const statusSchema = {
  type: "object",
  description: "What the operator and the session's runtime pod observed; written by the operator only.",
  properties: {
    observedGeneration: int(d("The metadata.generation the operator last reconciled.")),
    appliedGeneration: int(d("The generation whose spec.residency the runtime was last seen to match; behind metadata.generation, the latest residency is still to be carried out.")),
    residency: str({ enum: ["NotCreated", "InMemory", "Hibernated"], description: "Where the state lives now. NotCreated: no context yet (one is made by the first request)." }),
    phase: str({ enum: ["Pending", "Idle", "Hibernating", "Rehydrating", "Lost", "HandingOff"], description: "What is happening now. Pending: waiting for a runtime pod; HandingOff: waiting for the pod that held it to save it; Lost: that pod went away without saving it." }),
    conditions: { type: "array", description: "Ready, Hibernated and Degraded.", items: condition, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"] },
    pod: str(d("The runtime pod the session is placed on.")),
    podIP: str(d("That pod's IP when the session was placed (informational: the gateway routes by its own view of the pods).")),
    node: str(d("The node of that pod.")),
    tokenCount: int(d("Tokens in the conversation's evaluated state (the KV cache).")),
    contextSize: int(d("The context window the session got: spec.contextSize, else its pool's defaultContextSize.")),
    lastHibernation: {
      type: "object",
      description: "The last state written to the hibernation volume.",
      properties: {
        file: str(d("Its manifest, relative to the hibernation volume.")),
        bytes: int(d("Size of the state in bytes.")),
        size: str(d("The same, as a person reads it (67.5Mi).")),
        tokenCount: int(d("Tokens in the saved state.")),
        sha256: str(d("SHA-256 of an unsealed state file; sealed files are authenticated by their AEAD tags instead.")),
        time: time("When it was committed."),
        durationMs: { type: "number", description: "How long the hibernate took, in milliseconds." },
      },
    },
    lastRehydrate: {
      type: "object",
      description: "The last restore of the state into memory.",
      properties: {
        time: time("When it finished."),
        durationMs: { type: "number", description: "How long it took, in milliseconds." },
        replayed: str(d("Set when the saved state was not loaded and the history was evaluated again instead: why (runtime_version: another llama.cpp wrote it; model_changed: the pool served another model; load_failed).")),
        reusedTokens: int(d("Restored tokens the first evaluation after it reused.")),
        restoreVerified: { type: "boolean", description: "Whether that evaluation reused every restored token the prompt shared (false raises Degraded, reason RestoreNotReused)." },
      },
    },
    lastLoss: {
      type: "object",
      description: "The last crash that cost turns: the session came back from its last checkpoint.",
      properties: {
        time: time("When it came back."),
        tokensLost: int(d("Tokens of conversation after the checkpoint, lost.")),
        checkpointTime: time("When the checkpoint it came back from was written."),
      },
    },
    lastActivityTime: time("The last request the session served; its idle policy counts from here, across moves."),
    liveStateLostAt: time("When the runtime holding the session in memory went away without saving it (SIGKILL, lost node, OOM kill); the conversation since its last hibernation is gone."),
    epoch: int(d("The placement epoch, raised before every new placement; files written by an older placement are ignored.")),
    handOffFrom: str(d("Set while the session waits for this pod, which held it in memory, to save it.")),
  },
};

export function inferenceSessionCrd() {
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: `${PLURAL}.${GROUP}` },
    spec: {
      group: GROUP,
      scope: "Namespaced",
      names: { plural: PLURAL, singular: "inferencesession", kind: KIND, listKind: `${KIND}List`, shortNames: ["isess"], categories: ["torpor"] },
      versions: [{
        name: VERSION,
        served: true,
        storage: true,
        subresources: { status: {} },
        additionalPrinterColumns: [
          { name: "Model", type: "string", jsonPath: ".spec.model" },
          { name: "Desired", type: "string", jsonPath: ".spec.residency" },
          { name: "Residency", type: "string", jsonPath: ".status.residency" },
          { name: "Node", type: "string", jsonPath: ".status.node" },
          { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
          { name: "Tokens", type: "integer", jsonPath: ".status.tokenCount", priority: 1 },
          { name: "Context", type: "integer", jsonPath: ".status.contextSize", priority: 1, description: "Context window in tokens" },
          { name: "Size", type: "string", jsonPath: ".status.lastHibernation.size", priority: 1, description: "Size of the last hibernation" },
          { name: "Pod", type: "string", jsonPath: ".status.pod", priority: 1 },
        ],
        schema: {
          openAPIV3Schema: {
            type: "object",
            description: "A hibernatable LLM chat session.",
            required: ["spec"],
            "x-kubernetes-validations": [{
              rule: `self.metadata.name.size() <= ${MAX_SESSION_NAME_LENGTH}`,
              message: `name must be at most ${MAX_SESSION_NAME_LENGTH} characters: the session's hibernation files are named after it`,
            }],
            properties: {
              apiVersion: str(d("The API version: torpor.dev/v1alpha1.")), kind: str(d("InferenceSession.")), metadata: { type: "object" },
              spec: specSchema,
              status: statusSchema,
            },
          },
        },
      }],
    },
  };
}
