using ActorBlk.Host.Commands;
using Akka.Actor;
using Xunit;
using AkkaEvent = Akka.Event;
using SerilogEvent = Serilog.Events;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Akka's last-resort logger of the commands. When a logger actor stops with events still in its
/// mailbox, Akka hands them to <c>akka.stdout-logger-class</c> whatever <c>stdout-loglevel</c>
/// says (LoggerMailbox.CleanUp); the default writes Akka's plain format to stdout, where a README
/// walk-through found a stopping node's <c>[INFO][...] Remoting shut down</c> lines (and where
/// they would break <c>bench</c>'s and <c>iostat</c>'s JSON).
/// </summary>
public sealed class FallbackLoggerSpec
{
    [Fact]
    public void Serve_and_bench_send_what_reaches_it_to_serilog_at_its_level_with_its_cause()
    {
        var sink = new CollectingSink();
        var target = new Serilog.LoggerConfiguration().MinimumLevel.Verbose().WriteTo.Sink(sink).CreateLogger();
        var cause = new InvalidOperationException("boom");
        SerilogFallbackLogger.Write(target, new AkkaEvent.Info("remoting", typeof(FallbackLoggerSpec), "Remoting shut down"));
        SerilogFallbackLogger.Write(target, new AkkaEvent.Warning("x", typeof(FallbackLoggerSpec), "careful"));
        SerilogFallbackLogger.Write(target, new AkkaEvent.Error(cause, "x", typeof(FallbackLoggerSpec), "failed"));
        SerilogFallbackLogger.Write(target, new AkkaEvent.Debug("x", typeof(FallbackLoggerSpec), "detail"));

        Assert.Equal(
            [SerilogEvent.LogEventLevel.Information, SerilogEvent.LogEventLevel.Warning, SerilogEvent.LogEventLevel.Error, SerilogEvent.LogEventLevel.Debug],
            sink.Events.Select(e => e.Level));
        Assert.Equal(["Remoting shut down", "careful", "failed", "detail"], sink.Events.Select(e => e.RenderMessage(System.Globalization.CultureInfo.InvariantCulture)));
        Assert.Same(cause, sink.Events[2].Exception);
    }

    [Theory]
    [InlineData(SerilogFallbackLogger.TypeName, typeof(SerilogFallbackLogger))]
    [InlineData(ClientFallbackLogger.TypeName, typeof(ClientFallbackLogger))]
    public async Task Akka_loads_them_by_the_names_the_commands_configure(string typeName, Type expected)
    {
        // A wrong name would fail every command at start (Akka throws for an unknown class).
        using var system = ActorSystem.Create("fallback", $"akka.stdout-logger-class = \"{typeName}\"\nakka.loglevel = OFF");
        Assert.IsType(expected, system.Settings.StdoutLogger);
        await system.Terminate();
    }
}
