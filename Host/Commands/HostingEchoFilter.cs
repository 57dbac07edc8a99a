using System.Text;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Standard output for <c>serve</c> without Akka.Hosting's own echo of a start-up failure. When a
/// start-up task throws (a device file that cannot be opened, say), Akka.Hosting writes
/// "Unable to start AkkaHostedService - shutting down application.\nCause: " and the exception with
/// its stack trace to <see cref="Console.Out"/> before it rethrows; <c>serve</c> then reports the
/// same failure itself, as one log line and one line on stderr (with the stack trace when the
/// failure is not an operator's error). The echo is dropped; every other write passes through.
/// </summary>
internal sealed class HostingEchoFilter(TextWriter inner) : TextWriter
{
    /// <summary>How Akka.Hosting's echo begins (AkkaHostedService.StartAsync).</summary>
    internal const string EchoPrefix = "Unable to start AkkaHostedService";

    /// <inheritdoc />
    public override Encoding Encoding => inner.Encoding;

    /// <summary>Puts the filter in front of <see cref="Console.Out"/>, and back when disposed.</summary>
    public static IDisposable Install()
    {
        var original = Console.Out;
        Console.SetOut(new HostingEchoFilter(original));
        return new Restore(original);
    }

    /// <inheritdoc />
    public override void Write(char value) => inner.Write(value);

    /// <inheritdoc />
    public override void Write(string? value) => inner.Write(value);

    /// <inheritdoc />
    public override void Write(char[] buffer, int index, int count) => inner.Write(buffer, index, count);

    /// <inheritdoc />
    public override void WriteLine(string? value)
    {
        if (value is not null && value.StartsWith(EchoPrefix, StringComparison.Ordinal))
        {
            return;
        }

        inner.WriteLine(value);
    }

    /// <inheritdoc />
    public override void Flush() => inner.Flush();

    private sealed class Restore(TextWriter original) : IDisposable
    {
        public void Dispose() => Console.SetOut(original);
    }
}
