// The CRD, built in code so the schema sits next to the types; `node dist/scripts/generate-crd.js`
// writes crds/inferencesessions.torpor.dev.yaml and a test fails if the committed file is stale.
import { GROUP, KIND, MAX_CONTEXT_SIZE, MIN_CONTEXT_SIZE, PLURAL, VERSION } from "./inference-session.js";

const str = (extra: Record<string, unknown> = {}) => ({ type: "string", ...extra });
const int = (extra: Record<string, unknown> = {}) => ({ type: "integer", format: "int64", ...extra });
const time = () => ({ type: "string", format: "date-time" });

const DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const SUB_PATH = "^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$";

export const specSchema = {
  type: "object",
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
      properties: {
        idleAfter: str({ pattern: "^([0-9]+(ms|s|m|h))+$", maxLength: 32, description: "Hibernate after this long without requests (Go duration, e.g. 15m)." }),
        checkpoint: {
          type: "object",
          description: "Write the state between turns while InMemory, so a crash loses at most this much. Off unless set; costs one state file per session on the volume.",
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
  required: ["type", "status", "reason", "message", "lastTransitionTime"],
  properties: {
    type: str({ enum: ["Ready", "Hibernated", "Degraded"] }),
    status: str({ enum: ["True", "False", "Unknown"] }),
    reason: str({ maxLength: 1024 }),
    message: str({ maxLength: 32768 }),
    lastTransitionTime: time(),
    observedGeneration: int({ minimum: 0 }),
  },
};

export const statusSchema = {
  type: "object",
  properties: {
    observedGeneration: int(),
    appliedGeneration: int(),
    residency: str({ enum: ["NotCreated", "InMemory", "Hibernated"] }),
    phase: str({ enum: ["Pending", "Idle", "Hibernating", "Rehydrating", "Lost", "HandingOff"] }),
    conditions: { type: "array", items: condition, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"] },
    pod: str(),
    podIP: str(),
    node: str(),
    tokenCount: int(),
    contextSize: int(),
    lastHibernation: {
      type: "object",
      properties: { file: str(), bytes: int(), size: str(), tokenCount: int(), sha256: str(), time: time(), durationMs: { type: "number" } },
    },
    lastRehydrate: { type: "object", properties: { time: time(), durationMs: { type: "number" }, replayed: str(), reusedTokens: int(), restoreVerified: { type: "boolean" } } },
    lastLoss: { type: "object", properties: { time: time(), tokensLost: int(), checkpointTime: time() } },
    lastActivityTime: time(),
    liveStateLostAt: time(),
    epoch: int(),
    handOffFrom: str(),
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
            properties: {
              apiVersion: str(), kind: str(), metadata: { type: "object" },
              spec: specSchema,
              status: statusSchema,
            },
          },
        },
      }],
    },
  };
}
