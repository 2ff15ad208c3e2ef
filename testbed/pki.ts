// A throwaway PKI for one testbed: CA, API server serving cert, admin client cert
// (system:masters) and the service-account signing key pair. Made with the openssl CLI.
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface Pki { dir: string; caCert: string; caKey: string; serverCert: string; serverKey: string; adminCert: string; adminKey: string; saKey: string; saPub: string }

async function openssl(args: string[]): Promise<void> {
  try {
    await run("openssl", args);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new Error("the testbed needs the openssl command (Debian/Ubuntu: apt-get install openssl)");
    throw err;
  }
}

async function signedCert(dir: string, name: string, subj: string, ext: string, ca: { cert: string; key: string }): Promise<[string, string]> {
  const key = path.join(dir, `${name}.key`), csr = path.join(dir, `${name}.csr`), crt = path.join(dir, `${name}.crt`), extFile = path.join(dir, `${name}.ext`);
  await writeFile(extFile, ext);
  await openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", subj]);
  await openssl(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", extFile]);
  return [crt, key];
}

export async function createPki(dir: string): Promise<Pki> {
  const caCert = path.join(dir, "ca.crt"), caKey = path.join(dir, "ca.key");
  await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", caKey, "-out", caCert,
    "-days", "2", "-subj", "/CN=torpor-testbed-ca", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  const ca = { cert: caCert, key: caKey };
  const [[serverCert, serverKey], [adminCert, adminKey]] = await Promise.all([
    signedCert(dir, "apiserver", "/CN=kube-apiserver",
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n", ca),
    signedCert(dir, "admin", "/O=system:masters/CN=testbed-admin", "extendedKeyUsage=clientAuth\n", ca),
  ]);
  const saKey = path.join(dir, "sa.key"), saPub = path.join(dir, "sa.pub");
  await openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", saKey]);
  await openssl(["ec", "-in", saKey, "-pubout", "-out", saPub]);
  return { dir, caCert, caKey, serverCert, serverKey, adminCert, adminKey, saKey, saPub };
}
