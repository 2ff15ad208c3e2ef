// What the operator and the gateway both need to start: the runtime token (they call runtime pods
// with it) and Kubernetes credentials the standard way (KUBECONFIG, else in-cluster).
import { KubeConfig } from "@kubernetes/client-node";

export function requireRuntimeToken(env: NodeJS.ProcessEnv = process.env): string {
  const token = env.TORPOR_RUNTIME_TOKEN ?? "";
  if (token.length < 16) throw new Error("TORPOR_RUNTIME_TOKEN is required (the runtime pods' bearer token, at least 16 characters)");
  return token;
}

export function loadKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromDefault();
  return kc;
}
