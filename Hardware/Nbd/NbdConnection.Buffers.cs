using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Nbd;

// Request buffers from the server's budget (max-buffer-memory), and the watch for a client that
// hangs up while its request waits for one.
public sealed partial class NbdConnection
{
    /// <summary>
    /// Gives the slot a buffer its request can use: a write's payload, or a read that will run (one
    /// the checks refuse needs none). A larger buffer than the slot has is taken from the server's
    /// budget first, which waits while other requests hold it; replies held back go out before.
    /// </summary>
    private ValueTask PrepareBufferAsync(IBlockDevice device, NbdRequestSlot slot, NbdError error, CancellationToken ct)
    {
        var size = slot.Command switch
        {
            NbdCommand.Write when !Oversized(slot) => NbdRequestSlot.BufferSizeFor(slot.Length),
            NbdCommand.Read when error == NbdError.None => NbdRequestSlot.BufferSizeFor(slot.Length),
            _ => 0,
        };
        if (slot.BufferBytes >= size)
        {
            return default;
        }

        var budget = _server.Budget;
        var old = slot.BufferBytes;
        slot.ReleaseBuffer();
        budget.Return(old);
        if (budget.TryTake(size))
        {
            AllocateBuffer(device, slot, size);
            return default;
        }

        Uncork();
        return AllocateAfterAsync(device, slot, size, ct);
    }

    /// <summary>
    /// Waits for the budget to give a request's buffer, watching the client meanwhile: the
    /// connection reads nothing while it waits, so a client that hangs up would otherwise go
    /// unnoticed until memory came back, which under clients that pipeline large reads and read
    /// no reply is up to <c>stall-timeout</c> plus their transfer at <c>min-transfer-rate</c>
    /// (minutes). Each such connection stayed in CLOSE-WAIT holding one of
    /// <c>max-connections</c>, so clients that gave up on a write and closed filled the server and
    /// locked everyone out (an outside audit). A hang-up (see <see cref="HangUp"/>) lets the
    /// connection go at once, the request and whatever follows it in the input dropped
    /// unexecuted, as after a reset.
    /// </summary>
    private async ValueTask AllocateAfterAsync(IBlockDevice device, NbdRequestSlot slot, int size, CancellationToken ct)
    {
        var budget = _server.Budget;
        using (var waiting = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            var take = budget.TakeAsync(size, waiting.Token).AsTask();
            if (!OperatingSystem.IsLinux())
            {
                await take.ConfigureAwait(false);
            }

            string? how = null;

            // Once the client's FIN is in, its input is final: a disconnect found queued before it
            // stays queued for the rest of the wait, and later checks only look for a reset.
            var disconnectQueued = false;
            while (!take.IsCompleted)
            {
                try
                {
                    await take.WaitAsync(HangUpCheckInterval, ct).ConfigureAwait(false);
                    break;
                }
                catch (TimeoutException)
                {
                }
                catch (OperationCanceledException)
                {
                    // The connection is ending (stop, abort): the take's own cancellation is
                    // linked, so it settles below, granted or not.
                    break;
                }

                Interlocked.Increment(ref _server.HangUpChecks);
                if (!take.IsCompleted && (how = HangUp(slot, ref disconnectQueued)) is not null)
                {
                    break;
                }
            }

            if (how is not null || ct.IsCancellationRequested)
            {
                waiting.Cancel();
                try
                {
                    // Granted just before the cancel: the bytes go back, as nothing will use them.
                    await take.ConfigureAwait(false);
                    budget.Return(size);
                }
                catch (OperationCanceledException)
                {
                }

                if (how is null)
                {
                    ct.ThrowIfCancellationRequested();
                }

                Interlocked.Increment(ref _server.HangUpCloses);
                throw new IOException($"the client {how} while a request of {size} bytes waited for buffer memory (max-buffer-memory)");
            }

            await take.ConfigureAwait(false);
        }

        AllocateBuffer(device, slot, size);
    }

    /// <summary>
    /// How the client hung up, or null while it may still want replies (Linux: <c>POLLRDHUP</c>;
    /// elsewhere never). A reset always counts. A closed sending side (FIN) counts unless the
    /// input before it holds an <c>NBD_CMD_DISC</c>: libnbd sends the disconnect and then shuts
    /// its writes down while it reads the replies, and after <c>NBD_CMD_DISC</c> the server "MUST
    /// handle all outstanding requests" (a review). Without one the FIN is the protocol's hard
    /// disconnect (the client "drops the TCP session"). Over TLS the input cannot be read ahead
    /// and libnbd sends a FIN after <c>close_notify</c>, so there only a reset counts.
    /// <paramref name="disconnectQueued"/> remembers, for one wait, that the input before the FIN
    /// holds a disconnect, so it is read ahead once rather than at every check.
    /// </summary>
    private string? HangUp(NbdRequestSlot waiting, ref bool disconnectQueued)
    {
        var handle = _socket.SafeHandle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var fd = (int)handle.DangerousGetHandle();
            var events = LibC.PollNow(fd, LibC.POLLRDHUP);
            if (events < 0)
            {
                return null;
            }

            // Over a Unix socket a client's close() shuts both directions here (POLLHUP) whether or
            // not it left replies unread, and only with replies unread does the kernel also set an
            // error (ECONNRESET: POLLERR), TCP's reset; a close with nothing unread is TCP's FIN,
            // and counts as one below (a write then NBD_CMD_DISC, then close(), is served). Taken
            // for a reset, such a write was dropped (NbdServerUnixSocketSpec), as a TLS client's
            // would be when it closes after close_notify.
            if ((events & (_unixPeer is null ? LibC.POLLERR | LibC.POLLHUP : LibC.POLLERR)) != 0)
            {
                return "reset the connection";
            }

            if ((events & LibC.POLLRDHUP) == 0)
            {
                return null;
            }

            // Over TLS the input cannot be read ahead, and libnbd closes a TLS session with
            // close_notify and then a FIN (strace of libnbd 1.14 by a verifying helper): a FIN
            // there may follow a DISC, so only a reset counts.
            if (_tls is not null || disconnectQueued)
            {
                return null;
            }

            disconnectQueued = DisconnectQueued(fd, waiting);
            return disconnectQueued ? null : "closed its end";
        }
        catch (ObjectDisposedException)
        {
            return "closed its end";
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// Whether what the client sent before it closed its end (the input buffer's unread bytes
    /// and the socket's queue, peeked) holds an <c>NBD_CMD_DISC</c> after the waiting request's
    /// own payload. Plain TCP only (the blocking reader's buffer).
    /// </summary>
    private unsafe bool DisconnectQueued(int fd, NbdRequestSlot waiting)
    {
        Interlocked.Increment(ref _server.DisconnectPeeks);
        var buffered = _inEnd - _inStart;
        var queued = Math.Max(0, _socket.Available);
        var input = new byte[buffered + queued];
        _in.AsSpan(_inStart, buffered).CopyTo(input);
        var peeked = 0L;
        if (queued > 0)
        {
            fixed (byte* p = &input[buffered])
            {
                peeked = Math.Max(0, LibC.Recv(fd, p, queued, LibC.MSG_PEEK | LibC.MSG_DONTWAIT));
            }
        }

        var payload = waiting.Command == NbdCommand.Write ? waiting.Length : 0;
        return NbdProtocol.HoldsDisconnect(input.AsSpan(0, buffered + (int)peeked), payload);
    }

    private void AllocateBuffer(IBlockDevice device, NbdRequestSlot slot, int size)
    {
        try
        {
            slot.AllocateBuffer(device, size);
        }
        catch
        {
            _server.Budget.Return(size);
            throw;
        }
    }
}
