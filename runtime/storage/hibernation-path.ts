// Where a session's hibernation files live: <root>/<namespace>/[<sub-path>/]. Sub-paths give
// per-tenant separation but must never leave the namespace's folder, even through symlinks.
import { lstat, mkdir, realpath } from "node:fs/promises";
import path from "node:path";
import { TorporError } from "../../contract/errors.js";
import { MAX_SESSION_NAME_LENGTH } from "../../contract/inference-session.js";

const NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/**
 * Kubernetes-style names (DNS subdomain), so a name can never be a path of its own; a session's
 * name short enough for the file names made from it (MAX_SESSION_NAME_LENGTH, as the CRD says).
 */
export function validateName(kind: "namespace" | "name", value: string): void {
  if (!NAME.test(value) || value.includes("..")) {
    throw new TorporError("bad_request", `${kind} "${value}" is not a valid Kubernetes name (lowercase alphanumerics, '-' and '.', at most 253 characters)`);
  }
  if (kind === "name" && value.length > MAX_SESSION_NAME_LENGTH) {
    throw new TorporError("bad_request", `session name "${value.slice(0, 32)}..." is ${value.length} characters; at most ${MAX_SESSION_NAME_LENGTH}, because its hibernation files are named after it`);
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
 * resolves outside <root>/<namespace> once symlinks are followed. `realRoot`: the root's realpath,
 * when the caller has it already (it is on every rehydrate's path: each file-system call here is a
 * thread-pool round trip, a tenth of a small state's whole load).
 */
export async function resolveSessionDir(root: string, namespace: string, subPath = "", realRoot?: string): Promise<string> {
  validateName("namespace", namespace);
  const segments = validateSubPath(subPath);
  const nsDir = path.join(realRoot ?? await realpath(root), namespace);
  await realFolder(nsDir, async () => { await mkdir(nsDir, { recursive: true, mode: 0o700 }); });
  // Walk one segment at a time and check before creating anything, so a symlinked segment can
  // never make us create folders outside the namespace.
  let realDir = nsDir;
  for (const segment of segments) {
    const next = path.join(realDir, segment);
    await realFolder(next, () => mkdir(next, { mode: 0o700 }).then(() => undefined, (err: NodeJS.ErrnoException) => {
      if (err.code !== "EEXIST") throw err;
    }), subPath);
    realDir = next;
  }
  return realDir;
}

/**
 * Makes sure `dir`, whose parent is real, is a folder and not a symlink, creating it if missing.
 * One lstat where it exists: its parent being real, only its own last component could be a link.
 */
async function realFolder(dir: string, create: () => Promise<void>, subPath?: string): Promise<void> {
  const refuse = () => new TorporError("invalid_path", subPath === undefined
    ? `namespace folder ${path.basename(dir)} is a symlink; refusing to follow it`
    : `hibernation path "${subPath}" escapes the namespace folder through a symlink`);
  let st = await lstat(dir).catch((err: NodeJS.ErrnoException) => { if (err.code === "ENOENT") return undefined; throw err; });
  if (!st) {
    await create();
    st = await lstat(dir);
  }
  if (st.isSymbolicLink()) throw refuse();
  if (!st.isDirectory()) throw new TorporError("invalid_path", `${subPath === undefined ? "namespace folder" : `hibernation path "${subPath}"`} is not a folder on the volume`);
}
