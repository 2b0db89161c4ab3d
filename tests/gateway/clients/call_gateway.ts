// A call through the types openapi-typescript generates (./api.ts, with its
// default options), compiled with `tsc --strict` and run with node against a
// real gateway by tests/gateway/test_generated_clients.py.
//
// It must compile: the /compute body with only `payload` (every other field
// optional), and typed fields of the health and readiness objects. The two
// lines marked as expected errors must be errors: a wrong `result_format` and
// a field the readiness object does not have (with an untyped object neither is).
import type { paths } from "./api";

type ComputeBody = paths["/compute"]["post"]["requestBody"]["content"]["application/json"];
type ComputeAnswer =
  paths["/compute"]["post"]["responses"][200]["content"]["application/json"];
type Health = paths["/healthz"]["get"]["responses"][200]["content"]["application/json"];
type Ready = paths["/readyz"]["get"]["responses"][200]["content"]["application/json"];

// No @types/node: only what this program uses of node's globals.
declare const process: { argv: string[]; exitCode?: number };

const body: ComputeBody = { payload: [5, 6] };
// @ts-expect-error `result_format` is "json" or "tagged"
const wrong: ComputeBody = { payload: [5, 6], result_format: "xml" };

function readiness(ready: Ready): { name: string; ready: boolean; status: string; state: string }[] {
  const status: "ready" = ready.status;
  // @ts-expect-error the readiness object has no `uptime`
  void ready.uptime;
  return Object.entries(ready.backends).map(([name, backend]) => ({
    name: `${status}:${name}`,
    ready: backend.ready,
    status: backend.status,
    state: backend.addresses?.[0]?.state ?? "none",
  }));
}

async function main(base: string, key: string): Promise<void> {
  const response = await fetch(`${base}/compute`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });
  const answer = (await response.json()) as ComputeAnswer;
  const health = (await (await fetch(`${base}/healthz`)).json()) as Health;
  const ready = (await (await fetch(`${base}/readyz`)).json()) as Ready;
  const alive: "ok" = health.status;
  console.log(
    JSON.stringify({
      status: response.status,
      result: answer.result,
      backend: answer.backend,
      health: alive,
      readiness: readiness(ready),
      unused: wrong.payload,
    }),
  );
}

main(process.argv[2], process.argv[3]).catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
