// Who may talk to a session: the bearer token is checked with a TokenReview and the caller is
// authorised with a SubjectAccessReview, e.g. `create` on `inferencesessions/chat` in the
// session's namespace. Decisions are cached briefly so a chat does not cost two API calls a turn.
import { createHash } from "node:crypto";
import { AuthenticationV1Api, AuthorizationV1Api, type KubeConfig } from "@kubernetes/client-node";
import { TorporError } from "../contract/errors.js";
import { GROUP, PLURAL } from "../contract/inference-session.js";

export interface AccessRequest {
  namespace: string;
  name: string;
  verb: "create" | "get";
  /** `chat` for generation routes; none for reading the session. */
  subresource?: "chat";
}

export interface AccessControl {
  check(authorization: string | undefined, req: AccessRequest): Promise<{ user: string }>;
}

export class KubernetesAccessControl implements AccessControl {
  private readonly authn: AuthenticationV1Api;
  private readonly authz: AuthorizationV1Api;
  private readonly cache = new Map<string, { until: number; user?: string; error?: TorporError }>();

  constructor(kc: KubeConfig, private readonly ttlMs = 30_000) {
    this.authn = kc.makeApiClient(AuthenticationV1Api);
    this.authz = kc.makeApiClient(AuthorizationV1Api);
  }

  async check(authorization: string | undefined, req: AccessRequest): Promise<{ user: string }> {
    const m = /^Bearer\s+(\S+)$/i.exec(authorization ?? "");
    if (!m) throw new TorporError("unauthorized", "a bearer token is required (Authorization: Bearer <token>, e.g. from `kubectl create token`)");
    const token = m[1]!;
    const key = createHash("sha256").update(`${token}\n${req.verb}\n${req.subresource ?? ""}\n${req.namespace}\n${req.name}`).digest("hex");
    const hit = this.cache.get(key);
    if (hit && hit.until > Date.now()) {
      if (hit.error) throw hit.error;
      return { user: hit.user! };
    }
    try {
      const user = await this.decide(token, req);
      this.cache.set(key, { until: Date.now() + this.ttlMs, user });
      return { user };
    } catch (err) {
      if (err instanceof TorporError && (err.status === 401 || err.status === 403)) this.cache.set(key, { until: Date.now() + this.ttlMs, error: err });
      throw err;
    } finally {
      if (this.cache.size > 10_000) this.cache.clear();
    }
  }

  private async decide(token: string, req: AccessRequest): Promise<string> {
    const review = await this.authn.createTokenReview({ body: { spec: { token } } });
    if (!review.status?.authenticated || !review.status.user) {
      throw new TorporError("unauthorized", `the bearer token was not accepted by the API server${review.status?.error ? `: ${review.status.error}` : ""}`);
    }
    const u = review.status.user;
    const extra = Object.fromEntries(Object.entries(u.extra ?? {}).map(([k, v]) => [k, v]));
    const sar = await this.authz.createSubjectAccessReview({ body: { spec: {
      user: u.username, groups: u.groups, uid: u.uid, extra,
      resourceAttributes: { group: GROUP, resource: PLURAL, verb: req.verb, namespace: req.namespace, name: req.name, ...(req.subresource ? { subresource: req.subresource } : {}) },
    } } });
    if (!sar.status?.allowed) {
      const what = `${req.verb} ${PLURAL}${req.subresource ? `/${req.subresource}` : ""}`;
      throw new TorporError("forbidden", `${u.username} may not ${what} "${req.name}" in namespace "${req.namespace}"${sar.status?.reason ? ` (${sar.status.reason})` : ""}`);
    }
    return u.username ?? "unknown";
  }
}

/** For the local demo only: everyone is allowed. main.ts logs loudly when it is used. */
export const allowEveryone: AccessControl = { check: async () => ({ user: "anonymous" }) };
