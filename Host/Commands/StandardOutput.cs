using System.Runtime.InteropServices;
using System.Text;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Standard output could not take a write: its reader went away (a pipe to <c>head</c> that
/// ended, <see cref="BrokenPipe"/>), or the write failed (<c>&gt;/dev/full</c>, a closed
/// descriptor). Raised by <see cref="GuardedOutput"/>; the command line ends the command with
/// <see cref="StandardOutput.BrokenPipeExit"/> and nothing on stderr for the first, as a
/// program that SIGPIPE ends, and with a one-line "write error" and exit 1 for the second, as
/// coreutils' close_stdout reports it.
/// </summary>
internal sealed class StandardOutputException(string message, bool brokenPipe, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The reader of the pipe (or socket) on standard output has gone.</summary>
    public bool BrokenPipe { get; } = brokenPipe;
}

/// <summary>Standard output for the client commands (every command but <c>serve</c>).</summary>
internal static partial class StandardOutput
{
    /// <summary>
    /// Exit code of a command whose standard output's reader went away: 128 + SIGPIPE, the status
    /// a shell gives sysstat's <c>iostat</c> or <c>fio</c> when SIGPIPE ends them.
    /// </summary>
    public const int BrokenPipeExit = 141;

    private const short PollErr = 0x008;

    /// <summary>Puts a <see cref="GuardedOutput"/> in front of <see cref="Console.Out"/>, and the original back when disposed.</summary>
    public static IDisposable Install()
    {
        var original = Console.Out;
        Console.SetOut(new GuardedOutput(original, ReaderGone));
        return new Restore(original);
    }

    /// <summary>
    /// Whether standard output is a pipe or socket whose reader has gone. .NET's console drops a
    /// write that fails with EPIPE (and the runtime ignores SIGPIPE), so a command that writes
    /// reports for ever (<c>iostat 1 | head -3</c>) would never learn it: poll reports POLLERR on
    /// the write end of a pipe without readers (and on a socket reset by its peer).
    /// </summary>
    public static unsafe bool ReaderGone()
    {
        if (OperatingSystem.IsWindows())
        {
            return false;
        }

        var fd = new PollFd { Fd = 1 };
        return Poll(&fd, 1, 0) == 1 && (fd.REvents & PollErr) != 0;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short REvents;
    }

    [LibraryImport("libc", EntryPoint = "poll")]
    private static unsafe partial int Poll(PollFd* fds, nuint count, int timeout);

    /// <summary>
    /// Puts a <see cref="ForgivingError"/> in front of <see cref="Console.Error"/>, and the original
    /// back when disposed: with stderr closed (<c>2&gt;&amp;-</c>) a message the command could not
    /// write threw, and the command line's report of that failure threw again from its handler,
    /// which aborted the process (exit 134: <c>bench</c> at its first line, <c>iostat</c> when no
    /// node answered). A write to stderr that fails is dropped, as a C program's fprintf to a
    /// closed stderr fails unseen; the exit code still says how the command ended.
    /// </summary>
    public static IDisposable InstallErrorGuard()
    {
        var original = Console.Error;
        Console.SetError(new ForgivingError(original));
        return new RestoreError(original);
    }

    private sealed class Restore(TextWriter original) : IDisposable
    {
        public void Dispose() => Console.SetOut(original);
    }

    private sealed class RestoreError(TextWriter original) : IDisposable
    {
        public void Dispose() => Console.SetError(original);
    }
}

/// <summary>A writer in front of standard error that drops a write that fails (stderr closed or full): there is nowhere left to report it.</summary>
internal sealed class ForgivingError(TextWriter inner) : TextWriter
{
    /// <inheritdoc />
    public override Encoding Encoding => inner.Encoding;

    /// <inheritdoc />
    public override void Write(char value) => Try(() => inner.Write(value));

    /// <inheritdoc />
    public override void Write(string? value) => Try(() => inner.Write(value));

    /// <inheritdoc />
    public override void Write(char[] buffer, int index, int count) => Try(() => inner.Write(buffer, index, count));

    /// <inheritdoc />
    public override void WriteLine() => Try(inner.WriteLine);

    /// <inheritdoc />
    public override void WriteLine(string? value) => Try(() => inner.WriteLine(value));

    /// <inheritdoc />
    public override Task WriteAsync(char value)
    {
        Write(value);
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public override Task WriteAsync(string? value)
    {
        Write(value);
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public override Task WriteAsync(char[] buffer, int index, int count)
    {
        Write(buffer, index, count);
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public override Task WriteLineAsync()
    {
        WriteLine();
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public override Task WriteLineAsync(string? value)
    {
        WriteLine(value);
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public override Task FlushAsync()
    {
        Flush();
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public override void Flush() => Try(inner.Flush);

    private static void Try(Action write)
    {
        try
        {
            write();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Nowhere left to say it.
        }
    }
}

/// <summary>
/// A writer in front of standard output that turns a failed write into
/// <see cref="StandardOutputException"/>: the inner writer's IOException (ENOSPC on
/// <c>/dev/full</c>) or UnauthorizedAccessException (EBADF when the descriptor is closed), and a
/// reader that has gone (<paramref name="readerGone"/>, checked before each write, since the
/// console drops EPIPE). Before, such a failure ended the command with "actorblk: failed:" and a
/// stack trace, and a reader that went away was never noticed.
/// </summary>
internal sealed class GuardedOutput(TextWriter inner, Func<bool> readerGone) : TextWriter
{
    /// <inheritdoc />
    public override Encoding Encoding => inner.Encoding;

    /// <inheritdoc />
    public override void Write(char value) => Guard(() => inner.Write(value));

    /// <inheritdoc />
    public override void Write(string? value) => Guard(() => inner.Write(value));

    /// <inheritdoc />
    public override void Write(char[] buffer, int index, int count) => Guard(() => inner.Write(buffer, index, count));

    /// <inheritdoc />
    public override void WriteLine() => Guard(inner.WriteLine);

    /// <inheritdoc />
    public override void WriteLine(string? value) => Guard(() => inner.WriteLine(value));

    /// <inheritdoc />
    public override Task WriteAsync(char value) => Run(() => Write(value));

    /// <inheritdoc />
    public override Task WriteAsync(string? value) => Run(() => Write(value));

    /// <inheritdoc />
    public override Task WriteAsync(char[] buffer, int index, int count) => Run(() => Write(buffer, index, count));

    /// <inheritdoc />
    public override Task WriteLineAsync() => Run(WriteLine);

    /// <inheritdoc />
    public override Task WriteLineAsync(string? value) => Run(() => WriteLine(value));

    /// <inheritdoc />
    public override Task FlushAsync() => Run(Flush);

    /// <inheritdoc />
    public override void Flush() => Guard(inner.Flush);

    // The console writes synchronously (its async methods do too); so do these, and a failure is
    // the returned task's.
    private static Task Run(Action write)
    {
        try
        {
            write();
            return Task.CompletedTask;
        }
        catch (StandardOutputException ex)
        {
            return Task.FromException(ex);
        }
    }

    // The reader is looked for before the write, where a C program's write would fail with EPIPE:
    // looked for after it, a command whose last line the reader took and then left (`sysfs cat X |
    // head -1`) ended 141 instead of 0 (a review).
    private void Guard(Action write)
    {
        if (readerGone())
        {
            throw new StandardOutputException("Broken pipe", brokenPipe: true);
        }

        try
        {
            write();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            var cause = ex is UnauthorizedAccessException && ex.InnerException is IOException io ? io : ex;
            throw new StandardOutputException(cause.Message, brokenPipe: false, ex);
        }
    }
}
