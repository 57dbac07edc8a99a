using System.Buffers.Binary;
using System.Net.Sockets;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Nbd;

// Replies of the transmission phase: corking and batching, sending (with the stall timeout),
// slot recycling, and the simple and structured replies, block status included.
public sealed partial class NbdConnection
{
    /// <summary>
    /// Called by a slot when the block layer completed its last part (on the completion context)
    /// or by the reader for a request answered at once. The reply is written from here when no
    /// other thread is writing: a separate writer task would cost one more thread wake-up per reply.
    /// </summary>
    internal void Completed(NbdRequestSlot slot)
    {
        _completed.Writer.TryWrite(slot);
        Drain();
    }

    /// <summary>Holds replies back while the reader takes requests that are already buffered.</summary>
    private void Cork() => Volatile.Write(ref _corked, 1);

    /// <summary>Lets held-back replies go: writes them unless another thread is writing (which then does).</summary>
    private void Uncork()
    {
        // Full fence, pairing with the one in Drain after _writing is cleared: either this
        // Drain gets the writer, or the thread that had it sees the cork off and writes.
        Interlocked.Exchange(ref _corked, 0);
        Drain();
    }

    /// <summary>
    /// Copies completed replies into the reply buffer and sends them with one write, then recycles
    /// the slots (so a slot's buffer is reused only after its data left). While the reader is
    /// corked the write waits until it uncorks, unless the buffer or the batch is full. One thread
    /// at a time; a write that cannot finish at once continues asynchronously and drains again after it.
    /// </summary>
    private void Drain()
    {
        while (Interlocked.CompareExchange(ref _writing, 1, 0) == 0)
        {
            var full = false;
            while (_batchCount < _batch.Length && _completed.Reader.TryPeek(out var slot))
            {
                if (!_broken)
                {
                    var size = ReplySize(slot);
                    if (_outLength + size > _out.Length && _outLength > 0)
                    {
                        full = true; // send what is there first
                        break;
                    }

                    try
                    {
                        WriteReply(slot);
                    }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed), never the completing thread
                    catch (Exception ex)
#pragma warning restore CA1031
                    {
                        WriteFailed(ex);
                    }
                }

                _completed.Reader.TryRead(out _);
                _batch[_batchCount++] = slot;
                if (!_outTail.IsEmpty || _outLength >= FlushThreshold)
                {
                    full = true;
                    break;
                }
            }

            var count = _batchCount;
            if (count > 0 && (_broken || full || count == _batch.Length || Volatile.Read(ref _corked) == 0))
            {
                _batchCount = 0;
                if (!_broken)
                {
                    ValueTask write;
                    try
                    {
                        write = WriteOut();
                    }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed), never the completing thread
                    catch (Exception ex)
#pragma warning restore CA1031
                    {
                        WriteFailed(ex);
                        write = default;
                    }

                    if (!write.IsCompleted)
                    {
                        _ = FinishWriteAsync(write, count);
                        return;
                    }

                    EndWrite(write);
                }

                _outLength = 0;
                _outTail = default;
                RecycleBatch(count);
            }

            // Full fence: the writer is free before the cork and the queue are looked at again
            // (pairs with Uncork, and with Completed's write to the queue before its Drain).
            Interlocked.Exchange(ref _writing, 0);
            if (!_completed.Reader.TryPeek(out _) && (Volatile.Read(ref _batchCount) == 0 || Volatile.Read(ref _corked) != 0))
            {
                return;
            }
        }
    }

    /// <summary>Sends the reply buffer (and a large read's payload after it) in one write, or two.</summary>
    private ValueTask WriteOut()
    {
        if (_server.WriteOutHook is { } hook)
        {
            return hook();
        }

        var head = _out.AsMemory(0, _outLength);
        var tail = _outTail;
        if (_plain.Blocking && OperatingSystem.IsLinux())
        {
            return SendRaw(head, tail);
        }

        var output = (Stream?)_tls ?? _stream;
        return tail.IsEmpty ? output.WriteAsync(head) : WriteWithTailAsync(output, head, tail);
    }

    /// <summary>
    /// Sends without blocking (the caller may be a dispatch loop serving other connections); what
    /// the socket cannot take at once is sent by a thread-pool thread that waits in poll for room.
    /// </summary>
    private ValueTask SendRaw(ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail)
    {
        var fd = (int)_socket.SafeHandle.DangerousGetHandle();
        var sent = TrySend(fd, head.Span);
        if (sent == head.Length)
        {
            var sentTail = tail.IsEmpty ? 0 : TrySend(fd, tail.Span);
            if (sentTail == tail.Length)
            {
                return default;
            }

            var restTail = tail[sentTail..];
            return new ValueTask(SendLater(fd, default, restTail));
        }

        var restHead = head[sent..];
        return new ValueTask(SendLater(fd, restHead, tail));
    }

    // A thread of its own, not the pool's: it may wait up to the send timeout for a client that
    // stopped reading, and a few such clients must not starve the pool the actors run on.
    private Task SendLater(int fd, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail) =>
        Task.Factory.StartNew(() => SendBlocking(fd, head, tail), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private unsafe int TrySend(int fd, ReadOnlySpan<byte> data)
    {
        var sent = 0;
        fixed (byte* p = data)
        {
            while (sent < data.Length)
            {
                var n = LibC.Send(fd, p + sent, data.Length - sent, LibC.MSG_DONTWAIT | LibC.MSG_NOSIGNAL);
                if (n > 0)
                {
                    sent += (int)n;
                }
                else if (n == -LibC.EAGAIN)
                {
                    break;
                }
                else if (n != -LibC.EINTR)
                {
                    throw new IOException($"NBD connection {Id}: send failed: {LibC.Describe((int)n)}");
                }
            }
        }

        return sent;
    }

    /// <summary>
    /// Sends the rest of a reply, waiting for room in the socket. A client that takes no byte of it
    /// for <see cref="NbdServerOptions.StallTimeout"/> has stopped reading: the send fails and the
    /// connection is aborted, which gives its slots and their buffers back.
    /// </summary>
    private void SendBlocking(int fd, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail)
    {
        var timeout = Options.StallTimeout;
        var start = Environment.TickCount64;
        var lastProgress = start;
        var deadline = Options.TransferDeadline(start, head.Length + tail.Length);
        foreach (var part in (ReadOnlyMemory<byte>[])[head, tail])
        {
            var rest = part;
            while (!rest.IsEmpty)
            {
                if (_broken)
                {
                    throw new IOException($"NBD connection {Id} was closed");
                }

                var sent = TrySend(fd, rest.Span);
                rest = rest[sent..];
                var now = Environment.TickCount64;
                if (sent > 0)
                {
                    lastProgress = now;
                }

                if (rest.IsEmpty)
                {
                    break;
                }

                var left = (long)timeout.TotalMilliseconds - (now - lastProgress);
                if (left <= 0)
                {
                    throw NbdStallException.Reply(timeout);
                }

                // A client that takes a byte now and then still holds the reply's buffer: it must
                // take the reply at min-transfer-rate at least.
                if (now >= deadline)
                {
                    throw NbdStallException.Slow("took a reply", head.Length + tail.Length, now - start, Options);
                }

                left = Math.Min(left, deadline - now);

                // In slices, so an abort (which sets _broken) is seen within a second.
                var polled = LibC.PollOne(fd, LibC.POLLOUT, (int)Math.Min(left, 1000));
                if (polled < 0 && polled != -LibC.EINTR)
                {
                    throw new IOException($"NBD connection {Id}: poll failed: {LibC.Describe(polled)}");
                }
            }
        }
    }

    private static async ValueTask WriteWithTailAsync(Stream output, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail)
    {
        await output.WriteAsync(head).ConfigureAwait(false);
        await output.WriteAsync(tail).ConfigureAwait(false);
    }

    private async Task FinishWriteAsync(ValueTask write, int count)
    {
        try
        {
            await write.ConfigureAwait(false);
        }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed); unobserved, it left the writer taken for good
        catch (Exception ex)
#pragma warning restore CA1031
        {
            if (ex is NbdStallException && !_broken)
            {
                _server.LogClose($"NBD connection {Id} from {RemoteEndPoint()} closed: {ex.Message}");
            }

            WriteFailed(ex);
        }

        _outLength = 0;
        _outTail = default;
        RecycleBatch(count);
        Interlocked.Exchange(ref _writing, 0);
        Drain();
    }

    private void EndWrite(ValueTask write)
    {
        try
        {
            write.GetAwaiter().GetResult();
        }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed), never the completing thread
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // The client is gone: drop the remaining replies, keep returning slots.
            WriteFailed(ex);
        }
    }

    /// <summary>An unexpected exception of the server's own (a bug) while serving a request: logged with its stack.</summary>
    internal void LogFault(string what, Exception ex) =>
        _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()}: {what} failed: {ex}");

    /// <summary>
    /// Writing replies failed: the connection is aborted, its remaining replies dropped while its
    /// slots keep coming back, so it drains and closes. An I/O error is the client going away; any
    /// other exception is the server's (a bug) and is logged with its stack (after the abort no
    /// more replies are written). Before, such an exception escaped Drain with the writer still
    /// taken, into the block layer's completion or faulting the write's task unobserved: no reply
    /// went out on the connection again, and it never closed.
    /// </summary>
    private void WriteFailed(Exception ex)
    {
        if (ex is not (IOException or SocketException or ObjectDisposedException or InvalidOperationException))
        {
            _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()} closed: writing its replies failed: {ex}");
        }

        Abort();
    }

    private void RecycleBatch(int count)
    {
        for (var i = 0; i < count; i++)
        {
            var slot = _batch[i];
            _batch[i] = null!;
            Recycle(slot);
        }
    }

    private void Recycle(NbdRequestSlot slot)
    {
        // A buffer stays with the slot for the next request when it is small and the server's
        // budget lets idle slots keep it; otherwise it is freed and its bytes go to any waiter.
        var bytes = slot.BufferBytes;
        if (bytes > 0 && (bytes > NbdRequestSlot.KeepBytes || !_server.Budget.TryKeep(bytes)))
        {
            slot.ReleaseBuffer();
            _server.Budget.Return(bytes);
        }

        Interlocked.Decrement(ref _inFlight);
        _free.Writer.TryWrite(slot);
        Release();
    }

    /// <summary>Bytes of <paramref name="slot"/>'s reply, payload included.</summary>
    private int ReplySize(NbdRequestSlot slot)
    {
        var data = slot.Error == NbdError.None && slot.Command == NbdCommand.Read ? (int)slot.Length : 0;
        if (!_structured)
        {
            return NbdProtocol.SimpleReplyHeaderLength + data;
        }

        return NbdProtocol.StructuredReplyHeaderLength + (slot.Error != NbdError.None ? 6 : slot.Command switch
        {
            NbdCommand.Read => 8 + data,
            NbdCommand.BlockStatus => 4 + (8 * ((slot.Flags & NbdCommandFlags.ReqOne) != 0 ? 1 : MaxExtents)),
            _ => 0,
        });
    }

    /// <summary>The free part of the reply buffer.</summary>
    private Span<byte> Free => _out.AsSpan(_outLength);

    /// <summary>Appends a read's payload, or sends it after the buffer when it does not fit.</summary>
    private void AppendPayload(ReadOnlyMemory<byte> payload)
    {
        if (payload.Length <= _out.Length - _outLength)
        {
            payload.Span.CopyTo(Free);
            _outLength += payload.Length;
        }
        else
        {
            _outTail = payload; // the slot is recycled only after the write
        }
    }

    private void WriteReply(NbdRequestSlot slot)
    {
        var error = slot.Error;
        if (!_structured)
        {
            var data = error == NbdError.None && slot.Command == NbdCommand.Read ? (int)slot.Length : 0;
            var span = Free;
            BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.SimpleReplyMagic);
            BinaryPrimitives.WriteUInt32BigEndian(span[4..], (uint)error);
            BinaryPrimitives.WriteUInt64BigEndian(span[8..], slot.Cookie);
            _outLength += NbdProtocol.SimpleReplyHeaderLength;
            if (data > 0)
            {
                AppendPayload(slot.Payload);
            }

            return;
        }

        if (error != NbdError.None)
        {
            var span = WriteChunkHeader(slot.Cookie, NbdChunkType.Error, 6);
            BinaryPrimitives.WriteUInt32BigEndian(span, (uint)error);
            BinaryPrimitives.WriteUInt16BigEndian(span[4..], 0);
            _outLength += 6;
            return;
        }

        switch (slot.Command)
        {
            case NbdCommand.Read:
            {
                var span = WriteChunkHeader(slot.Cookie, NbdChunkType.OffsetData, 8 + slot.Length);
                BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)slot.Offset);
                _outLength += 8;
                AppendPayload(slot.Payload);
                break;
            }

            case NbdCommand.BlockStatus:
                WriteBlockStatus(slot);
                break;

            default:
                WriteChunkHeader(slot.Cookie, NbdChunkType.None, 0);
                break;
        }
    }

    /// <summary>
    /// Gathers a <c>base:allocation</c> block status reply's extents into the slot: the requested
    /// range as the driver's allocation map reports it, or one data extent when the driver does not
    /// track allocation (proto.md, base:allocation). The map is asked without blocking
    /// (<see cref="IAllocationMap.GetExtentAsync"/>): a local map answers at once, on this thread; a
    /// remote one (an NBD client device's, a mirror of remote legs) over the network, before the
    /// reply is queued, so the writer never waits for it. At most <see cref="MaxExtents"/> extents,
    /// one with <c>NBD_CMD_FLAG_REQ_ONE</c>; the last may end before the range does, which the
    /// protocol allows. Neighbours in the same state are one extent, as qemu's
    /// <c>nbd_extent_array_add</c> merges them: a linear device answered a hole across its members'
    /// boundary as two, and <c>REQ_ONE</c> there got only the first. Extents are whole blocks of the
    /// export's minimum block size (<see cref="WholeBlocks"/>). A question still unanswered
    /// when the connection's reader ends (the client hung up, the server stops, the device is
    /// removed) is given up, and the rest of the range answered as data.
    /// </summary>
    private async ValueTask GatherExtentsAsync(NbdRequestSlot slot)
    {
        var max = (slot.Flags & NbdCommandFlags.ReqOne) != 0 ? 1 : MaxExtents;
        var extents = slot.ExtentsFor(max);
        var offset = slot.Offset;
        var end = slot.Offset + slot.Length;
        var count = 0;

        // Asked per request: a stacked device's table (and with it its map) can be swapped.
        var map = _device is null ? null : IAllocationMap.Of(_device);
        var block = (long)(_device?.LogicalBlockSize ?? 1); // the export's advertised minimum block size

        // The map is asked at most this many times per reply (each answer at least a block): a
        // range of many small pieces in one state ends early rather than keep the reply waiting.
        var questions = MaxMapQuestions;
        while (offset < end && questions-- > 0)
        {
            long length;
            bool allocated;
            try
            {
                // A closing connection asks no more (a remote map would send each question on),
                // and one that closes gives up the question it waits for (see _mapQuestions).
                var closing = _mapQuestions.Token;
                closing.ThrowIfCancellationRequested();
                var extent = map is null ? null : await map.GetExtentAsync(offset, end - offset, closing).ConfigureAwait(false);
                (length, allocated) = extent is { Length: > 0 } told ? (told.Length, told.Allocated) : (end - offset, true);

                // Past the range (a custom driver's map breaking its contract): the rest of the range.
                length = Math.Min(length, end - offset);
                length = WholeBlocks(offset, length, end, block, ref allocated);
            }
            catch (OperationCanceledException) when (_mapQuestions.IsCancellationRequested)
            {
                // The connection is going away: data, which is always safe, and no more questions.
                (length, allocated) = (end - offset, true);
            }
            catch (Exception ex)
            {
                // The device changed under us (a table swap, a removal), or a custom driver's map
                // threw: claim data, which is always safe, keep the connection, and say so.
                (length, allocated) = (end - offset, true);
                _server.LogMapFailure(_device?.Name ?? "?", ex);
            }

            if (count > 0 && allocated == extents[count - 1].Data)
            {
                // The range is at most 2^32 - 1 bytes (a request's length), so the sum fits.
                extents[count - 1].Length += (uint)length;
            }
            else if (count < max)
            {
                extents[count++] = ((uint)length, allocated);
            }
            else
            {
                break;
            }

            offset += length;
        }

        slot.ExtentCount = count;
    }

    /// <summary>
    /// The length of an extent at <paramref name="offset"/> cut to end on a multiple of
    /// <paramref name="block"/> (the export's minimum block size) or at the range's
    /// <paramref name="end"/>: "the server ... MUST use descriptor lengths that are an integer
    /// multiple of any advertised minimum block size" (proto.md, <c>NBD_REPLY_TYPE_BLOCK_STATUS</c>).
    /// A map may answer finer: a remote one passes on another server's extents (nbdkit's are
    /// bytes), a custom driver's anything. An extent that reaches past a boundary is cut back to
    /// it; one that ends short of the next boundary gives way to that whole block as data, which
    /// is always safe (qemu's NBD client rounds a server's unaligned extents the same way,
    /// <c>nbd_parse_blockstatus_payload</c>). Only the first extent of a query that starts off a
    /// boundary, and the last of one that ends off a boundary, are not whole blocks.
    /// </summary>
    internal static long WholeBlocks(long offset, long length, long end, long block, ref bool allocated)
    {
        var stop = offset + length;
        if (stop == end || stop % block == 0)
        {
            return length;
        }

        var boundary = stop - (stop % block);
        if (boundary > offset)
        {
            return boundary - offset;
        }

        allocated = true;
        return Math.Min(boundary + block, end) - offset;
    }

    // A block status whose map answered asynchronously: queued to the writer once gathered.
    private async Task CompleteWhenGatheredAsync(ValueTask gathered, NbdRequestSlot slot)
    {
        try
        {
            await gathered.ConfigureAwait(false);
        }
        finally
        {
            Completed(slot);
        }
    }

    /// <summary>Writes the <c>base:allocation</c> block status chunk of the extents gathered into the slot (<see cref="GatherExtentsAsync"/>).</summary>
    private void WriteBlockStatus(NbdRequestSlot slot)
    {
        var header = NbdProtocol.StructuredReplyHeaderLength;
        var count = slot.ExtentCount;
        var span = Free[..(header + 4 + (8 * count))];
        for (var i = 0; i < count; i++)
        {
            var (length, data) = slot.Extents![i];
            var entry = span[(header + 4 + (8 * i))..];
            BinaryPrimitives.WriteUInt32BigEndian(entry, length);
            BinaryPrimitives.WriteUInt32BigEndian(entry[4..], (uint)(data ? NbdAllocationFlags.Data : NbdAllocationFlags.Hole | NbdAllocationFlags.Zero));
        }

        BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], 1); // NBD_REPLY_FLAG_DONE
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)NbdChunkType.BlockStatus);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], slot.Cookie);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], (uint)(4 + (8 * count)));
        BinaryPrimitives.WriteUInt32BigEndian(span[header..], NbdProtocol.BaseAllocationId);
        _outLength += header + 4 + (8 * count);
    }

    /// <summary>Writes a final chunk's header and returns the span after it (room for the chunk's fixed part).</summary>
    private Span<byte> WriteChunkHeader(ulong cookie, NbdChunkType type, uint length)
    {
        var span = Free;
        BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], 1); // NBD_REPLY_FLAG_DONE
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], length);
        _outLength += NbdProtocol.StructuredReplyHeaderLength;
        return Free;
    }
}
