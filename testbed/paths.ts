import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Repository root (compiled to dist/testbed/; sources live beside dist/). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const DIST = path.join(REPO_ROOT, "dist");
export const CACHE_DIR = process.env.TORPOR_CACHE_DIR ?? path.join(os.homedir(), ".cache", "torpor");
export const MODEL_DIR = path.join(CACHE_DIR, "models");
