// Run by the operator's cleanup pod when a session is deleted and no runtime pod is there to
// delete its hibernation files: node dist/scripts/remove-session-files.js <namespace> <name> [path].
// The volume is mounted at TORPOR_HIBERNATION_DIR. No keys needed: deleting never opens a file.
import { HibernationStore } from "../runtime/storage/hibernation-store.js";

const [namespace, name, subPath = ""] = process.argv.slice(2);
const root = process.env.TORPOR_HIBERNATION_DIR;
if (!namespace || !name || !root) {
  console.error("usage: TORPOR_HIBERNATION_DIR=<volume> remove-session-files.js <namespace> <name> [path]");
  process.exit(2);
}
const removed = await new HibernationStore(root).remove({ namespace, name, path: subPath });
console.log(JSON.stringify({ namespace, name, path: subPath, removed }));
