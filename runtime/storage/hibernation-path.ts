// Where a session's hibernation files live: <root>/<namespace>/[<sub-path>/]. Sub-paths give
// per-tenant separation but must never leave the namespace's folder, even through symlinks.
import { mkdir, realpath } from "node:fs/promises";
import path from "node:path";
import { TorporError } from "../../contract/errors.js";

const NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/** Kubernetes-style names (DNS subdomain), so a name can never be a path of its own. */
export function validateName(kind: "namespace" | "name", value: string): void {
  if (!NAME.test(value) || value.includes("..")) {
    throw new TorporError("bad_request", `${kind} "${value}" is not a valid Kubernetes name (lowercase alphanumerics, '-' and '.', at most 253 characters)`);
  }
}

/** Syntactic check, shared with the CRD's CEL rule: relative, no `..`, no empty or hidden segments. */
export function validateSubPath(subPath: string): string[] {
  if (subPath === "") return [];
  if (subPath.length > 512) throw new TorporError("invalid_path", "hibernation path is longer than 512 characters");
  if (path.isAbsolute(subPath) || subPath.startsWith("/")) {
    throw new TorporError("invalid_path", `hibernation path "${subPath}" must be relative to the hibernation volume`);
  }
  const segments = subPath.split("/");
  for (const s of segments) {
    if (s === "..") throw new TorporError("invalid_path", `hibernation path "${subPath}" must not contain '..'`);
    if (!SEGMENT.test(s)) {
      throw new TorporError("invalid_path", `hibernation path "${subPath}" has an invalid segment "${s}" (letters, digits, '_', '-', '.', not starting with '.')`);
    }
  }
  return segments;
}

/**
 * Creates (0700) and returns the real folder for a session's files, refusing any sub-path that
 * resolves outside <root>/<namespace> once symlinks are followed.
 */
export async function resolveSessionDir(root: string, namespace: string, subPath = ""): Promise<string> {
  validateName("namespace", namespace);
  const segments = validateSubPath(subPath);
  const realRoot = await realpath(root);
  const nsDir = path.join(realRoot, namespace);
  await mkdir(nsDir, { recursive: true, mode: 0o700 });
  const realNs = await realpath(nsDir);
  if (realNs !== nsDir) {
    throw new TorporError("invalid_path", `namespace folder ${nsDir} is a symlink; refusing to follow it`);
  }
  // Walk one segment at a time and check before creating anything, so a symlinked segment can
  // never make us create folders outside the namespace.
  let realDir = realNs;
  for (const segment of segments) {
    const next = path.join(realDir, segment);
    await mkdir(next, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "EEXIST") throw err;
    });
    const resolved = await realpath(next);
    if (!resolved.startsWith(realNs + path.sep)) {
      throw new TorporError("invalid_path", `hibernation path "${subPath}" escapes the namespace folder through a symlink`);
    }
    realDir = resolved;
  }
  return realDir;
}
