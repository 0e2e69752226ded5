// Every transmission request is checked here and nowhere else (the shape of
// nbdkit's validate_request): command, flags, range and length, against what
// was negotiated. What passes is valid for the engine, which only asserts.
//
// Alignment is not required: a request that does not follow the advertised
// minimum block size is still served correctly (the engine reads the rest of
// its edge sectors first), only more slowly.
import { ioFailure } from '../errors.js'
import { Command, CommandFlag, NbdErrno, type NbdErrnoValue } from './constants.js'
import type { NbdRequest } from './request.js'

/** What the client and server agreed on during haggling. */
export interface Negotiated {
  /** The export's size in bytes. */
  readonly size: number
  readonly maximumPayload: number
  readonly structuredReplies: boolean
  /** Metadata contexts selected for BLOCK_STATUS. */
  readonly metaContexts: number
}

/** A request the server refuses, answered with an NBD error. */
export class RequestRefused extends Error {
  readonly errno: NbdErrnoValue
  constructor(errno: NbdErrnoValue, message: string) {
    super(message)
    this.errno = errno
  }
}

/** The flags each command takes; FUA on every command that writes. */
const FLAGS_ALLOWED: Readonly<Record<number, number>> = {
  [Command.READ]: CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.DISC]: 0,
  [Command.FLUSH]: 0,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: 0,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE,
  [Command.BLOCK_STATUS]: CommandFlag.REQ_ONE,
}

/** Commands with a range inside the export; writes past the end are ENOSPC (proto.md), others EINVAL. */
const RANGE_ERRNO: Readonly<Record<number, NbdErrnoValue>> = {
  [Command.READ]: NbdErrno.EINVAL,
  [Command.WRITE]: NbdErrno.ENOSPC,
  [Command.TRIM]: NbdErrno.ENOSPC,
  [Command.CACHE]: NbdErrno.EINVAL,
  [Command.WRITE_ZEROES]: NbdErrno.ENOSPC,
  [Command.BLOCK_STATUS]: NbdErrno.EINVAL,
}

/** Why `request` cannot be served, or undefined when it can. */
export const validateRequest = (request: NbdRequest, agreed: Negotiated): RequestRefused | undefined => {
  const { type, flags, offset, length } = request
  const allowed = FLAGS_ALLOWED[type]
  if (allowed === undefined) return new RequestRefused(NbdErrno.EINVAL, `unknown command ${type}`)
  const dfWithoutStructured = (flags & CommandFlag.DF) !== 0 && !agreed.structuredReplies
  if ((flags & ~allowed) !== 0 || dfWithoutStructured) {
    return new RequestRefused(NbdErrno.EINVAL, `flags 0x${flags.toString(16)} are not valid for command ${type}`)
  }
  if ((type === Command.READ || type === Command.WRITE) && length > agreed.maximumPayload) {
    return new RequestRefused(
      NbdErrno.EINVAL,
      `${type === Command.READ ? 'read' : 'write'} of ${length} bytes is over the ${agreed.maximumPayload}-byte maximum payload`,
    )
  }
  const rangeErrno = RANGE_ERRNO[type]
  if (rangeErrno !== undefined && (offset > agreed.size || length > agreed.size - offset)) {
    return new RequestRefused(rangeErrno, `range ${offset}+${length} is beyond the ${agreed.size}-byte export`)
  }
  if (type === Command.BLOCK_STATUS) {
    if (!agreed.structuredReplies || agreed.metaContexts === 0) {
      return new RequestRefused(NbdErrno.EINVAL, 'no metadata context was selected with NBD_OPT_SET_META_CONTEXT')
    }
    if (length === 0) return new RequestRefused(NbdErrno.EINVAL, 'block status of an empty range')
  }
  return undefined
}

/** The error a client is told for a failed request: refusals as decided, engine and system failures by errno. */
export const nbdErrnoFor = (e: unknown): NbdErrnoValue => (e instanceof RequestRefused ? e.errno : NbdErrno[ioFailure(e)])
