using System.Buffers;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Nbd;

// The blocking reader (plain TCP on Linux): the transmission phase's requests read with poll and
// recv on a thread of the connection's own.
public sealed partial class NbdConnection
{
    /// <summary>
    /// Runs the transmission phase's reader on a thread of its own that blocks in the kernel
    /// (poll and recv on the socket), as nbdkit does: an arriving request wakes this thread
    /// directly, which submits it (and, when the hardware queue issues directly and the driver
    /// completes inline, writes its reply) without a hop through the socket engine's thread
    /// and the thread pool. TLS connections keep the pipe reader over the TLS stream.
    /// </summary>
    private Task ReadOnThreadAsync()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        new Thread(() =>
        {
            try
            {
                ReadRequestsBlocking();
                done.TrySetResult();
            }
#pragma warning disable CA1031 // handed to RunAsync, which ends the connection for any failure
            catch (Exception ex)
#pragma warning restore CA1031
            {
                done.TrySetException(ex);
            }
        })
        {
            IsBackground = true,
            Name = $"actorblk/nbd{Id}",
        }.Start();
        return done.Task;
    }

    private void ReadRequestsBlocking()
    {
        var device = _device!;
        var handle = _socket.SafeHandle;
        var added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            var fd = (int)handle.DangerousGetHandle();
            if (!OpenWakeEvent())
            {
                return;
            }

            _in = GC.AllocateUninitializedArray<byte>(InputBufferSize, pinned: true);

            // Bytes the negotiation's pipe reader already took from the socket come first.
            if (_reader.TryRead(out var pending))
            {
                var buffered = pending.Buffer;
                if (buffered.Length > _in.Length)
                {
                    _in = GC.AllocateUninitializedArray<byte>((int)buffered.Length, pinned: true);
                }

                buffered.CopyTo(_in);
                _inEnd = (int)buffered.Length;
                _reader.AdvanceTo(buffered.End);
            }

            while (Fill(fd, NbdProtocol.RequestHeaderLength))
            {
                var header = new RequestHeader(_in.AsSpan(_inStart, NbdProtocol.RequestHeaderLength));
                _inStart += NbdProtocol.RequestHeaderLength;
                if (!Accept(header))
                {
                    return;
                }

                if (!_free.Reader.TryRead(out var slot))
                {
                    // Slots come back when their replies were written: those held back must go now.
                    Uncork();
                    slot = _free.Reader.ReadAsync(_stopReading.Token).AsTask().GetAwaiter().GetResult();
                }

                Start(slot, header);
                var error = Check(device, slot);
                try
                {
                    var prepare = PrepareBufferAsync(device, slot, error, _stopReading.Token);
                    if (!prepare.IsCompletedSuccessfully)
                    {
                        prepare.AsTask().GetAwaiter().GetResult();
                    }

                    if (header.Command == NbdCommand.Write)
                    {
                        ReceivePayload(fd, Oversized(slot) ? Span<byte>.Empty : slot.Payload.Span, (int)slot.Length);
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
        finally
        {
            CloseWakeEvent();
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>Makes the input buffer hold at least <paramref name="count"/> unread bytes; false at the end of the stream.</summary>
    private bool Fill(int fd, int count)
    {
        // A broken connection (its replies cannot be delivered: the client reset it) takes no more
        // of what it had buffered, and a stopping server takes no new request.
        if (_broken || _stopRequested)
        {
            return false;
        }

        while (_inEnd - _inStart < count)
        {
            if (_in.Length - _inStart < count)
            {
                _in.AsSpan(_inStart, _inEnd - _inStart).CopyTo(_in);
                _inEnd -= _inStart;
                _inStart = 0;
            }

            var n = Receive(fd, _in.AsSpan(_inEnd));
            if (n == 0)
            {
                return false; // the client went away
            }

            _inEnd += n;
        }

        return true;
    }

    /// <summary>Receives a write's <paramref name="length"/> payload bytes into <paramref name="target"/>, or past them when it is empty.</summary>
    private void ReceivePayload(int fd, Span<byte> target, int length)
    {
        // The payload's buffer holds budget the other connections may wait for: a client that
        // stops sending it is closed after the stall timeout, and one that sends it slower than
        // min-transfer-rate at its deadline (between requests it may idle).
        _inPayload = true;
        _payloadStart = Environment.TickCount64;
        _payloadDeadline = Options.TransferDeadline(_payloadStart, length);
        _payloadBytes = length;
        try
        {
            if (!target.IsEmpty)
            {
                ReceivePayloadCore(fd, target);
                return;
            }

            var scratch = _skip ??= new byte[SkipBufferSize];
            for (var left = length; left > 0;)
            {
                var n = Math.Min(left, scratch.Length);
                ReceivePayloadCore(fd, scratch.AsSpan(0, n));
                left -= n;
            }
        }
        finally
        {
            _inPayload = false;
        }
    }

    private void ReceivePayloadCore(int fd, Span<byte> target)
    {
        var copied = Math.Min(_inEnd - _inStart, target.Length);
        _in.AsSpan(_inStart, copied).CopyTo(target);
        _inStart += copied;
        while (copied < target.Length)
        {
            var rest = target.Length - copied;
            if (rest <= _in.Length / 4)
            {
                // A small rest comes through the input buffer, with whatever follows it.
                if (!Fill(fd, rest))
                {
                    throw new EndOfStreamException("the client closed the connection inside a write payload");
                }

                _in.AsSpan(_inStart, rest).CopyTo(target[copied..]);
                _inStart += rest;
                return;
            }

            var n = Receive(fd, target[copied..]);
            if (n == 0)
            {
                throw new EndOfStreamException("the client closed the connection inside a write payload");
            }

            copied += n;
        }
    }

    /// <summary>
    /// Receives what the socket holds, waiting in poll when it holds nothing; 0 at the end of the
    /// stream or after <see cref="Abort"/> (which shuts the socket down, ending any wait). Replies
    /// held back while requests kept coming are released before a wait.
    /// </summary>
    private unsafe int Receive(int fd, Span<byte> target)
    {
        fixed (byte* p = target)
        {
            while (true)
            {
                if (_inputEmpty)
                {
                    // The last receive left the socket empty (it returned less than asked): wait
                    // in poll at once instead of finding out with a receive that fails.
                    _inputEmpty = false;
                    Uncork();
                    if (!Poll(fd))
                    {
                        return 0;
                    }
                }

                var n = LibC.Recv(fd, p, target.Length, LibC.MSG_DONTWAIT);
                if (n > 0)
                {
                    Cork();
                    _inputEmpty = n < target.Length;
                    return (int)n;
                }

                if (n == 0 || _broken)
                {
                    return 0;
                }

                if (n != -LibC.EAGAIN && n != -LibC.EINTR)
                {
                    throw new IOException($"NBD connection {Id}: recv failed: {LibC.Describe((int)n)}");
                }

                if (n == -LibC.EAGAIN)
                {
                    Uncork();
                    if (!Poll(fd))
                    {
                        return 0;
                    }
                }
            }
        }
    }

    /// <summary>Waits until the socket is readable (or shut down); false after <see cref="Abort"/> or when the server stops.</summary>
    private bool Poll(int fd)
    {
        var timeout = -1;
        var slow = false;
        if (_inPayload)
        {
            var left = _payloadDeadline - Environment.TickCount64;
            if (left <= 0)
            {
                throw NbdStallException.Slow("sent a write's payload", _payloadBytes, Environment.TickCount64 - _payloadStart, Options);
            }

            timeout = (int)Math.Min(Options.StallTimeout.TotalMilliseconds, left);
            slow = left < Options.StallTimeout.TotalMilliseconds;
        }

        var stopEvent = _wakeEvent >= 0 ? _wakeEvent : _server.StopEvent;
        var polled = stopEvent >= 0 ? LibC.PollOneOrWake(fd, LibC.POLLIN, stopEvent, timeout) : LibC.PollOne(fd, LibC.POLLIN, timeout);
        if (polled == 2)
        {
            return false; // the server stops: no further request (or rest of a write's payload) is read
        }

        if (polled == 0)
        {
            throw slow
                ? NbdStallException.Slow("sent a write's payload", _payloadBytes, Environment.TickCount64 - _payloadStart, Options)
                : NbdStallException.Payload(Options.StallTimeout);
        }

        if (polled < 0 && polled != -LibC.EINTR)
        {
            throw new IOException($"NBD connection {Id}: poll failed: {LibC.Describe(polled)}");
        }

        return !_broken;
    }
}
