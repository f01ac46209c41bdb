/** The server's version, reported by `--version`, `/health` and the debug bundle. */
export const VERSION = "0.1.0";

/** Name used to recognise our own server processes (health answer, `--force-port`). */
export const SERVER_NAME = "gpt-oss-deno";
