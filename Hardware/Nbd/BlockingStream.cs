using System.Net.Sockets;

namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// A socket stream whose asynchronous reads and writes are blocking calls while
/// <see cref="Blocking"/> is set (the connection's own thread makes them), so the socket is never
/// registered with .NET's socket engine; cleared, it is the plain asynchronous stream.
/// </summary>
internal sealed class BlockingStream(NetworkStream inner, TimeSpan stallTimeout) : Stream
{
    public bool Blocking { get; set; } = true;

    /// <summary>How long an asynchronous write may wait for the peer to take its bytes.</summary>
    public TimeSpan StallTimeout { get; } = stallTimeout;

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);

    public override int Read(Span<byte> buffer) => inner.Read(buffer);

    public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);

    public override void Write(ReadOnlySpan<byte> buffer) => inner.Write(buffer);

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!Blocking)
        {
            return inner.ReadAsync(buffer, cancellationToken);
        }

        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            return new ValueTask<int>(inner.Read(buffer.Span));
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            return ValueTask.FromException<int>(ex);
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!Blocking)
        {
            var write = inner.WriteAsync(buffer, cancellationToken);
            return write.IsCompleted ? write : WithStallTimeoutAsync(write);
        }

        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            inner.Write(buffer.Span);
            return default;
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            return ValueTask.FromException(ex);
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    // TLS writes one record (at most 16 KiB) per call: a record the peer does not take within the
    // timeout means it stopped reading. The connection is then aborted, which ends the write.
    private async ValueTask WithStallTimeoutAsync(ValueTask write)
    {
        try
        {
            await write.AsTask().WaitAsync(StallTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw NbdStallException.Reply(StallTimeout);
        }
    }

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }
}
