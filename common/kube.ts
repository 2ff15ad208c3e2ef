// Small Kubernetes conventions every program uses the same way.
import { PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";

/** The namespace/name key of an object (work-queue keys, caches). */
export const keyOf = (o: { metadata?: { namespace?: string; name?: string } }) => `${o.metadata?.namespace}/${o.metadata?.name}`;

/** Request options that send a JSON merge patch (RFC 7386). */
export const mergePatch = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);
