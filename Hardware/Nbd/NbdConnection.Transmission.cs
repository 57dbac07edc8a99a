using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Nbd;

// The transmission phase's requests: the pipe reader (TLS, and off Linux), request headers and
// their checks, write payloads, and the commands' dispatch to the block layer.
public sealed partial class NbdConnection
{
    private async Task ReadRequestsAsync()
    {
        var device = _device!;
        var ct = _stopReading.Token;
        while (!_broken && !_stopRequested)
        {
            // Requests already buffered are taken without waiting, and their replies are held
            // back (corked) until the buffer is used up: then one write sends them all. Before
            // any wait the cork comes off, so a reply never waits for the client's next request.
            var read = _reader.ReadAtLeastAsync(NbdProtocol.RequestHeaderLength, ct);
            if (!read.IsCompleted)
            {
                Uncork();
            }

            var result = await read.ConfigureAwait(false);
            Cork();
            var buffer = result.Buffer;
            if (buffer.Length < NbdProtocol.RequestHeaderLength)
            {
                _reader.AdvanceTo(buffer.End);
                return; // the client went away between requests
            }

            var header = new RequestHeader(buffer.Slice(0, NbdProtocol.RequestHeaderLength));
            _reader.AdvanceTo(buffer.GetPosition(NbdProtocol.RequestHeaderLength));
            if (!Accept(header))
            {
                return; // in-flight requests still complete and reply; then the writer closes
            }

            if (!_free.Reader.TryRead(out var slot))
            {
                // Slots come back when their replies were written: those held back must go now.
                Uncork();
                slot = await _free.Reader.ReadAsync(ct).ConfigureAwait(false);
            }

            Start(slot, header);
            var error = Check(device, slot);
            try
            {
                await PrepareBufferAsync(device, slot, error, ct).ConfigureAwait(false);
                if (header.Command == NbdCommand.Write)
                {
                    await ReadPayloadAsync(Oversized(slot) ? Memory<byte>.Empty : slot.Payload, (int)slot.Length, ct).ConfigureAwait(false);
                }
            }
            catch
            {
                // Never submitted: give the slot back without a reply.
                Recycle(slot);
                throw;
            }

            Dispatch(device, slot, error);
        }
    }

    /// <summary>Checks a request header; false for NBD_CMD_DISC. Throws when the framing is lost.</summary>
    private bool Accept(in RequestHeader header)
    {
        if (header.Magic != NbdProtocol.RequestMagic)
        {
            // Framing is lost: nothing after this can be parsed, so the protocol requires closing.
            throw new NbdProtocolException($"bad request magic 0x{header.Magic:x8}");
        }

        if (header.Command == NbdCommand.Disconnect)
        {
            _clientEnded = true;
            return false;
        }

        if (header.Command == NbdCommand.Write && header.Length > (uint)Math.Max(Options.MaxPayload, NbdProtocol.MaxTolerablePayload))
        {
            // Over the maximum payload and over 32 MiB: "either the server or the client MAY
            // initiate a hard disconnect if a payload length ... would be large enough to be
            // deemed a denial of service attack". A smaller write over a configured max-payload
            // is read past and refused (see Oversized).
            throw new NbdProtocolException($"write of {header.Length} bytes is over the maximum payload of {Options.MaxPayload}");
        }

        return true;
    }

    /// <summary>
    /// A write over the advertised maximum payload (a client's breach: it "MUST NOT request a
    /// length larger than the maximum payload size") that is still at most 32 MiB, which "SHOULD
    /// NOT be considered a denial of service attack": its payload is read past without a buffer
    /// and the request refused with EINVAL, so the connection goes on.
    /// </summary>
    private bool Oversized(NbdRequestSlot slot) => slot.Command == NbdCommand.Write && slot.Length > (uint)Options.MaxPayload;

    private void Start(NbdRequestSlot slot, in RequestHeader header)
    {
        Interlocked.Increment(ref _references);
        Interlocked.Increment(ref _inFlight);
        _server.Budget.Unkeep(slot.BufferBytes);
        slot.Reset(header.Cookie, header.Command, header.Flags, (long)header.Offset, header.Length);
    }

    /// <summary>Reads a write's <paramref name="length"/> payload bytes into <paramref name="target"/>, or past them when it is empty.</summary>
    private async ValueTask ReadPayloadAsync(Memory<byte> target, int length, CancellationToken ct)
    {
        var copied = 0;
        var start = Environment.TickCount64;
        var deadline = Options.TransferDeadline(start, length);
        while (copied < length)
        {
            var read = _reader.ReadAsync(ct);
            ReadResult result;
            if (read.IsCompleted)
            {
                result = await read.ConfigureAwait(false);
            }
            else
            {
                Uncork();
                var left = deadline - Environment.TickCount64;
                if (left <= 0)
                {
                    throw NbdStallException.Slow("sent a write's payload", length, Environment.TickCount64 - start, Options);
                }

                var wait = TimeSpan.FromMilliseconds(Math.Min(Options.StallTimeout.TotalMilliseconds, left));
                try
                {
                    result = await read.AsTask().WaitAsync(wait, ct).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    throw wait < Options.StallTimeout
                        ? NbdStallException.Slow("sent a write's payload", length, Environment.TickCount64 - start, Options)
                        : NbdStallException.Payload(Options.StallTimeout);
                }
            }

            var buffer = result.Buffer;
            var take = (int)Math.Min(buffer.Length, length - copied);
            if (!target.IsEmpty)
            {
                buffer.Slice(0, take).CopyTo(target.Span[copied..]);
            }

            _reader.AdvanceTo(buffer.GetPosition(take));
            copied += take;
            if (copied < length && result.IsCompleted)
            {
                throw new EndOfStreamException("the client closed the connection inside a write payload");
            }
        }
    }

    /// <summary>Checks a request and submits it to the block layer, or answers it at once.</summary>
    // The request was checked once, before its buffer was decided (a read the checks refuse gets none).
    private void Dispatch(IBlockDevice device, NbdRequestSlot slot, NbdError error)
    {
        if (error != NbdError.None)
        {
            slot.Error = error;
            Completed(slot);
            return;
        }

        var flags = (slot.Flags & NbdCommandFlags.Fua) != 0 ? RequestFlags.Fua : RequestFlags.None;
        switch (slot.Command)
        {
            case NbdCommand.Read:
                // PrepareBufferAsync gave every read that passed the checks its buffer.
                Submit(device, slot, BlockOp.Read, slot.Offset, slot.Length, slot.Payload, RequestFlags.None);
                break;
            case NbdCommand.Write:
                Submit(device, slot, BlockOp.Write, slot.Offset, slot.Length, slot.Payload, flags);
                break;
            case NbdCommand.Flush:
                Submit(device, slot, BlockOp.Flush, 0, 0, default, RequestFlags.None);
                break;
            case NbdCommand.Trim:
                if (device.Queue.Limits.MaxDiscardSectors == 0)
                {
                    // Discard turned off since the export was opened (queue/discard_max_bytes = 0):
                    // a trim is advisory ("a client MUST NOT make any assumptions about the
                    // contents"), so it succeeds doing nothing, and the trim the export advertised
                    // stays (taking it away would refuse every client's reconnect).
                    Completed(slot);
                    break;
                }

                FlushAfterIfFua(device, slot);
                Submit(device, slot, BlockOp.Discard, slot.Offset, slot.Length, default, RequestFlags.None);
                break;
            case NbdCommand.WriteZeroes:
                // NO_HOLE: "the area MUST be fully provisioned", which REQ_NOUNMAP asks of the driver.
                // FAST_ZERO: fail at once rather than zero slowly, which REQ_NOFALLBACK asks.
                FlushAfterIfFua(device, slot);
                Submit(device, slot, BlockOp.WriteZeroes, slot.Offset, slot.Length, default,
                    ((slot.Flags & NbdCommandFlags.NoHole) != 0 ? RequestFlags.NoUnmap : 0)
                    | ((slot.Flags & NbdCommandFlags.FastZero) != 0 ? RequestFlags.NoFallback : 0));
                break;
            case NbdCommand.BlockStatus:
                // The extents are gathered from the driver's allocation map first (a remote map
                // answers over the network, never awaited in the writer), then the writer answers.
                var gathered = GatherExtentsAsync(slot);
                if (gathered.IsCompleted)
                {
                    gathered.GetAwaiter().GetResult();
                    Completed(slot);
                }
                else
                {
                    _ = CompleteWhenGatheredAsync(gathered, slot);
                }

                break;
            default:
                slot.Error = NbdError.Invalid;
                Completed(slot);
                break;
        }
    }

    // "A server MUST NOT reply to a command that has NBD_CMD_FLAG_FUA set in its command flags
    // until the data (if any) written by that command is persisted" (proto.md; write zeroes: "The
    // server MAY send the reply message before the data has reached permanent storage, unless
    // NBD_CMD_FLAG_FUA is in use"). The block layer keeps FUA for writes (Linux's submit_bio_noacct
    // refuses REQ_FUA on any other operation; the file driver, a volatile cache, and the mirror's
    // legs honour it only there), so a FUA trim or write zeroes is carried out and then followed by
    // a flush of the device, as qemu-nbd does; the reply waits for that flush.
    private static void FlushAfterIfFua(IBlockDevice device, NbdRequestSlot slot)
    {
        if ((slot.Flags & NbdCommandFlags.Fua) != 0)
        {
            slot.FlushAfter(device);
        }
    }

    private NbdError Check(IBlockDevice device, NbdRequestSlot slot)
    {
        var command = slot.Command;
        if (Oversized(slot))
        {
            return NbdError.Invalid;
        }

        if (command is not (NbdCommand.Read or NbdCommand.Write or NbdCommand.Flush or NbdCommand.Trim or NbdCommand.WriteZeroes or NbdCommand.BlockStatus))
        {
            return NbdError.Invalid;
        }

        // FUA "is valid for all commands, provided NBD_FLAG_SEND_FUA has been negotiated, in which
        // case the server MUST accept all commands with this bit set (even by ignoring the bit)";
        // a flag unknown, or not defined for the command, SHOULD be EINVAL (flush and block status
        // included: an outside audit found them taking any flag).
        var allowed = NbdCommandFlags.Fua | command switch
        {
            NbdCommand.WriteZeroes => NbdCommandFlags.NoHole | NbdCommandFlags.FastZero,
            NbdCommand.Read => NbdCommandFlags.DontFragment,
            NbdCommand.BlockStatus => NbdCommandFlags.ReqOne,
            _ => NbdCommandFlags.None,
        };
        if ((slot.Flags & ~allowed) != 0)
        {
            return NbdError.Invalid;
        }

        // DF "MUST NOT be set unless the transmission flags include NBD_FLAG_SEND_DF" (advertised
        // with structured replies only): a flag not applicable here, EINVAL as nbdkit answers it
        // (an outside audit's differential run found it taken).
        if ((slot.Flags & NbdCommandFlags.DontFragment) != 0 && (_transmissionFlags & NbdTransmissionFlags.SendDf) == 0)
        {
            return NbdError.Invalid;
        }

        if (command == NbdCommand.Flush)
        {
            return NbdError.None;
        }

        var writes = command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes;
        if (writes && device.IsReadOnly)
        {
            return NbdError.Perm;
        }

        if (slot.Length == 0)
        {
            return NbdError.Invalid;
        }

        // An offset of 2^63 or more (negative here) is beyond any device too.
        if (slot.Offset < 0 || slot.Offset > device.Capacity - slot.Length)
        {
            // "The server SHOULD return NBD_ENOSPC if it receives a write [or write zeroes]
            // request including one or more sectors beyond the size of the device."
            return command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpace : NbdError.Invalid;
        }

        if (command == NbdCommand.Read && slot.Length > (uint)Options.MaxPayload)
        {
            return _structured ? NbdError.Overflow : NbdError.Invalid;
        }

        if (command == NbdCommand.BlockStatus)
        {
            return _allocationContext ? NbdError.None : NbdError.Invalid;
        }

        if (command == NbdCommand.Trim && (_transmissionFlags & NbdTransmissionFlags.SendTrim) == 0)
        {
            return NbdError.Invalid;
        }

        if (command == NbdCommand.WriteZeroes && (_transmissionFlags & NbdTransmissionFlags.SendWriteZeroes) == 0)
        {
            // FAST_ZERO was not advertised either: EINVAL, not ENOTSUP (proto.md, "Zero writes").
            return NbdError.Invalid;
        }

        if (command == NbdCommand.WriteZeroes && (slot.Flags & NbdCommandFlags.FastZero) != 0 && (_transmissionFlags & NbdTransmissionFlags.SendFastZero) == 0)
        {
            // "If the server did not advertise NBD_FLAG_SEND_FAST_ZERO ... the server SHOULD fail
            // with NBD_EINVAL" (a write-zeroes export of an NBD client device without fast zero).
            return NbdError.Invalid;
        }

        return (slot.Offset | slot.Length) % device.LogicalBlockSize != 0 ? NbdError.Invalid : NbdError.None;
    }

    /// <summary>
    /// Submits one request; trims and write-zeroes longer than one bio can carry go as several
    /// bios, and the reply waits for the last.
    /// </summary>
    private static void Submit(IBlockDevice device, NbdRequestSlot slot, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags)
    {
        var chunk = BlockDevice.MaxIoBytes & ~(long)(device.LogicalBlockSize - 1);
        var parts = op.HasData() || length == 0 ? 1 : (int)((length + chunk - 1) / chunk);
        slot.ExpectParts(parts);
        for (var i = 0; i < parts; i++)
        {
            var partOffset = offset + (i * chunk);
            var partLength = parts == 1 ? length : Math.Min(chunk, length - (i * chunk));
            slot.SubmitPart(device, op, partOffset, partLength, buffer, flags);
        }
    }

    /// <summary>A parsed 28-byte request header.</summary>
    private readonly struct RequestHeader
    {
        public RequestHeader(ReadOnlySequence<byte> bytes)
            : this(Copy(bytes, stackalloc byte[NbdProtocol.RequestHeaderLength]))
        {
        }

        public RequestHeader(ReadOnlySpan<byte> h)
        {
            Magic = BinaryPrimitives.ReadUInt32BigEndian(h);
            Flags = (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(h[4..]);
            Command = (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(h[6..]);
            Cookie = BinaryPrimitives.ReadUInt64BigEndian(h[8..]);
            Offset = BinaryPrimitives.ReadUInt64BigEndian(h[16..]);
            Length = BinaryPrimitives.ReadUInt32BigEndian(h[24..]);
        }

        public uint Magic { get; }

        private static ReadOnlySpan<byte> Copy(ReadOnlySequence<byte> bytes, Span<byte> target)
        {
            bytes.CopyTo(target);
            return target;
        }

        public NbdCommandFlags Flags { get; }

        public NbdCommand Command { get; }

        public ulong Cookie { get; }

        public ulong Offset { get; }

        public uint Length { get; }
    }
}
