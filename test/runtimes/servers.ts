/**
 * Servers as child processes for the runtime matrix: each one started the way a user starts
 * it (an npm script), on a free port, in its own process group so that stopping it by its pid
 * also stops what npm spawned (sh, tsx, node, deno, wrangler, workerd). Output is kept (the
 * tail) for failure messages. Every wait is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'

export interface ServerProcess {
  name: string
  /** `http://127.0.0.1:<port>` */
  base: string
  pid: number
  /** The project folder it runs from, when not the repository (wrangler dev: a snapshot). */
  dir?: string
  /** The last lines of stdout and stderr, interleaved. */
  logs(): string
  /** Resolves with the exit code (or the signal's name) once the process exits. */
  exited: Promise<number | string>
  stop(): Promise<void>
}

export interface StartOptions {
  name: string
  command: string
  args: string[]
  cwd: string
  env: Record<string, string>
  port: number
  /** How long the server may take to answer `GET /health` with 200 (model loaded). */
  readyTimeoutMs: number
  /**
   * When the server counts as started, from a `GET /health` answer; default: status 200. A test
   * of a load that must fail waits for that instead.
   */
  ready?: (status: number, body: string) => boolean
}

const LOG_LIMIT = 64 * 1024
const running = new Set<ChildProcess>()

// If the test process dies without running afterAll, take the servers with it.
process.once('exit', () => {
  for (const child of running) killGroup(child, 'SIGKILL')
})

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() =>
        typeof address === 'object' && address
          ? resolve(address.port)
          : reject(new Error('no port')),
      )
    })
  })
}

/** Starts a server and waits until it is ready (`/health` answers 200); if not, it is stopped. */
export async function startServer(o: StartOptions): Promise<ServerProcess> {
  const child = spawn(o.command, o.args, {
    cwd: o.cwd,
    env: { ...process.env, ...o.env },
    detached: true, // its own process group: see killGroup
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  const output = captureOutput(child)
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child)
      resolve(code ?? signal ?? 'unknown')
    })
    child.once('error', (err) => {
      running.delete(child)
      output.push(`[spawn failed] ${err.message}\n`)
      resolve('spawn-error')
    })
  })
  const server: ServerProcess = {
    name: o.name,
    base: `http://127.0.0.1:${o.port}`,
    pid: child.pid ?? -1,
    logs: output.text,
    exited,
    stop: () => stopProcess(child, exited),
  }
  try {
    await waitUntilHealthy(server, o.readyTimeoutMs, o.ready ?? ((status) => status === 200))
  } catch (err) {
    await server.stop()
    throw err
  }
  return server
}

async function waitUntilHealthy(
  server: ServerProcess,
  timeoutMs: number,
  ready: (status: number, body: string) => boolean,
): Promise<void> {
  const started = Date.now()
  let exit: number | string | undefined
  void server.exited.then((code) => (exit = code))
  let last = 'no answer yet'
  while (Date.now() - started < timeoutMs) {
    if (exit !== undefined) {
      throw new Error(
        `${server.name} exited (${exit}) before it was ready.\n--- output ---\n${server.logs()}`,
      )
    }
    try {
      const res = await fetch(`${server.base}/health`, { signal: AbortSignal.timeout(10_000) })
      const body = await res.text()
      last = `${res.status} ${body}`
      if (ready(res.status, body)) return
    } catch (err) {
      last = (err as Error).message
    }
    await sleep(250)
  }
  throw new Error(
    `${server.name} was not ready within ${timeoutMs} ms (last /health: ${last}).\n` +
      `--- output ---\n${server.logs()}`,
  )
}

/** SIGTERM to the whole group, SIGKILL after 5 s; resolves when the leader has exited. */
async function stopProcess(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    killGroup(child, 'SIGKILL') // the leader is gone; make sure its children are too
    return
  }
  killGroup(child, 'SIGTERM')
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 5_000)
  await exited
  clearTimeout(timer)
  killGroup(child, 'SIGKILL') // stragglers that ignored SIGTERM (workerd under wrangler)
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return
  try {
    process.kill(-child.pid, signal) // negative pid: the process group led by the child
  } catch {
    // already gone
  }
}

function captureOutput(child: ChildProcess) {
  let text = ''
  const push = (chunk: Buffer | string) => {
    text += chunk.toString()
    if (text.length > LOG_LIMIT) text = text.slice(-LOG_LIMIT)
  }
  child.stdout?.on('data', push)
  child.stderr?.on('data', push)
  return { push, text: () => text }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
