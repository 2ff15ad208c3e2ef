// Who may talk to a session: the bearer token is checked with a TokenReview and the caller is
// authorised with a SubjectAccessReview, e.g. `create` on `inferencesessions/chat` in the
// session's namespace. Tokens must carry the gateway's audience (a token for the Kubernetes API
// itself is refused). Decisions are cached briefly so a chat does not cost two API calls a turn;
// unknown tokens are rate limited per source address, requests per identity.
import { createHash } from "node:crypto";
import { AuthenticationV1Api, AuthorizationV1Api, type KubeConfig, type V1UserInfo } from "@kubernetes/client-node";
import { TorporError } from "../contract/errors.js";
import { GROUP, PLURAL } from "../contract/inference-session.js";
import { DecisionCache } from "./decision-cache.js";
import { RateLimiter } from "./rate-limit.js";

export interface AccessRequest {
  namespace: string;
  name: string;
  verb: "create" | "get";
  /** `chat` for generation routes; none for reading the session. */
  subresource?: "chat" | "messages";
}

export interface AccessControl {
  /** `source`: the caller's address, for rate limiting unauthenticated attempts. */
  check(authorization: string | undefined, req: AccessRequest, source?: string): Promise<{ user: string }>;
}

export interface AccessOptions {
  /** Tokens must be issued for one of these (kubectl create token ... --audience torpor). */
  audiences: string[];
  ttlMs?: number;
  /** TokenReviews a source address may cause per second (unknown tokens), and their burst. */
  reviewsPerSecond?: number;
  reviewBurst?: number;
  /** Requests an authenticated identity may make per second, and their burst (0: unlimited). */
  requestsPerSecond?: number;
  requestBurst?: number;
}

/** What a TokenReview said of a token: who it is, for the SubjectAccessReviews that follow. */
type ReviewedUser = V1UserInfo;

export class KubernetesAccessControl implements AccessControl {
  private readonly authn: AuthenticationV1Api;
  private readonly authz: AuthorizationV1Api;
  private readonly cache: DecisionCache<string>;
  /** Tokens the API server authenticated, by hash: a known user's first request for another session costs a SubjectAccessReview only. */
  private readonly identities: DecisionCache<ReviewedUser>;
  private readonly reviews: RateLimiter;
  private readonly perUser: RateLimiter;

  constructor(kc: KubeConfig, private readonly o: AccessOptions) {
    this.authn = kc.makeApiClient(AuthenticationV1Api);
    this.authz = kc.makeApiClient(AuthorizationV1Api);
    this.cache = new DecisionCache(o.ttlMs ?? 30_000);
    this.identities = new DecisionCache(o.ttlMs ?? 30_000);
    this.reviews = new RateLimiter(o.reviewsPerSecond ?? 5, o.reviewBurst ?? 20);
    this.perUser = new RateLimiter(o.requestsPerSecond ?? 0, o.requestBurst ?? 100);
  }

  async check(authorization: string | undefined, req: AccessRequest, source = "unknown"): Promise<{ user: string }> {
    const m = /^Bearer\s+(\S+)$/i.exec(authorization ?? "");
    if (!m) throw new TorporError("unauthorized", `a bearer token is required (Authorization: Bearer <token>, e.g. from \`kubectl create token <serviceaccount> --audience ${this.o.audiences[0]}\`)`);
    const token = m[1]!;
    const key = createHash("sha256").update(`${token}\n${req.verb}\n${req.subresource ?? ""}\n${req.namespace}\n${req.name}`).digest("hex");
    const hit = this.cache.get(key);
    if (hit && "error" in hit) throw hit.error;
    if (hit) {
      this.perUser.take(hit.value, "requests from this identity");
      return { user: hit.value };
    }
    // Only a decision not in the cache costs the API server anything: that is what a source pays
    // for, and it gets it back when the token turns out valid (new users behind one NAT are fine).
    // A token already authenticated pays nothing here: a flood of junk from its address (a shared
    // NAT) must not keep a known user from opening another session; its identity's limit applies.
    const tokenKey = createHash("sha256").update(token).digest("hex");
    const known = this.identities.get(tokenKey);
    const identity = known && "value" in known ? known.value : undefined;
    if (!identity) this.reviews.take(source, "unauthenticated attempts from this address");
    try {
      const user = await this.decide(token, req, identity, tokenKey).catch((err: unknown) => {
        if (err instanceof TorporError) throw err;
        throw new TorporError("upstream_unavailable", `the API server could not check the token: ${(err as Error).message}; retry shortly`);
      });
      if (!identity) this.reviews.refund(source);
      this.cache.allow(key, user);
      this.perUser.take(user, "requests from this identity");
      return { user };
    } catch (err) {
      if (err instanceof TorporError && err.status === 403 && !identity) this.reviews.refund(source); // authenticated, just not allowed
      if (err instanceof TorporError && (err.status === 401 || err.status === 403)) this.cache.deny(key, err);
      throw err;
    }
  }

  private async decide(token: string, req: AccessRequest, known: ReviewedUser | undefined, tokenKey: string): Promise<string> {
    const u = known ?? await this.authenticate(token, tokenKey);
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

  /** A TokenReview with our audiences; the user it names is cached by the token's hash. */
  private async authenticate(token: string, tokenKey: string): Promise<ReviewedUser> {
    const review = await this.authn.createTokenReview({ body: { spec: { token, audiences: this.o.audiences } } });
    if (!review.status?.authenticated || !review.status.user) {
      throw new TorporError("unauthorized", `the bearer token was not accepted by the API server${review.status?.error ? `: ${review.status.error}` : ""} (tokens must be issued for audience ${this.o.audiences.join(" or ")}: kubectl create token <serviceaccount> --audience ${this.o.audiences[0]})`);
    }
    // An audience-bound review answers with the audiences the token is valid for; none of ours: refuse.
    if (review.status.audiences && !review.status.audiences.some((a) => this.o.audiences.includes(a))) {
      throw new TorporError("unauthorized", `the token is not issued for audience ${this.o.audiences.join(" or ")}`);
    }
    const user = review.status.user;
    this.identities.allow(tokenKey, user);
    return user;
  }
}

/** For the local demo only: everyone is allowed. main.ts logs loudly when it is used. */
export const allowEveryone: AccessControl = { check: async () => ({ user: "anonymous" }) };
