// `make demo-cluster`: the README quickstart against KUBECONFIG / TORPOR_GATEWAY (from `make cluster-up`).
import { runQuickstart } from "../testbed/quickstart.js";

try { runQuickstart(); console.log("\nquickstart: every step succeeded"); } catch (err) { console.error(String((err as Error).message)); process.exit(1); }
