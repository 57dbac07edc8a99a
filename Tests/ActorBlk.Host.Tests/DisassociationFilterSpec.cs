using ActorBlk.Host.Commands;
using Serilog;
using Serilog.Events;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// A peer that ends its remoting connection (a `devices` call that returned, a client that
/// exited, a node that left) is one information line naming it on a node's log, not a warning and
/// an ERROR line with about fifteen stack lines (a cluster audit found them on every node after
/// every ordinary client exit); every other event passes unchanged.
/// </summary>
public sealed class DisassociationFilterSpec
{
    private const string Gated = "Association with remote system {0} has failed; address is now gated for {1} ms. Reason is: [{2}]";
    private const string Peer = "akka.tcp://actorblk-client@127.0.0.1:37161";

    // As Akka.Remote's endpoint writer throws it (internal to Akka.Remote; Akka.Logger.Serilog
    // passes the warning's format and its arguments on).
    private static Exception Disassociation()
    {
        var type = typeof(Akka.Remote.RemoteTransportException).Assembly.GetType("Akka.Remote.EndpointDisassociatedException", throwOnError: true)!;
        var made = (Exception)Activator.CreateInstance(type, System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance, null, ["Disassociated"], null)!;
        try
        {
            throw made;
        }
        catch (Exception ex)
        {
            return ex;
        }
    }

    private static (ILogger Log, CollectingSink Sink) Pipeline(LogEventLevel minimum = LogEventLevel.Information)
    {
        var sink = new CollectingSink();
        return (new LoggerConfiguration().MinimumLevel.Is(minimum).WriteTo.Sink(new DisassociationFilter(sink, minimum)).CreateLogger(), sink);
    }

    [Fact]
    public void A_channel_the_shutting_down_transport_let_go_already_is_a_debug_line()
    {
        // Every clean `bench --join` exit printed one per peer at warning level (an outside audit).
        const string Template = "Unable to REMOVE channel [{0}->{1}](Id={2}) from connection group. May not shut down cleanly.";
        var (log, sink) = Pipeline(LogEventLevel.Warning);
        log.Warning(Template, "[::ffff:127.0.0.1]:34734", "[::ffff:127.0.0.1]:46053", "6024b301");
        Assert.Empty(sink.Events);

        var (verbose, debug) = Pipeline(LogEventLevel.Debug);
        verbose.Warning(Template, "[::ffff:127.0.0.1]:34734", "[::ffff:127.0.0.1]:46053", "6024b301");
        Assert.Equal(LogEventLevel.Debug, Assert.Single(debug.Events).Level);

        // Its sibling for a channel that could not be added still warns.
        log.Warning("Unable to ADD channel [{0}->{1}](Id={2}) to connection group. May not shut down cleanly.", "a", "b", "c");
        Assert.Equal(LogEventLevel.Warning, Assert.Single(sink.Events).Level);
    }

    [Fact]
    public void A_peer_that_ended_its_connection_is_one_information_line_naming_it()
    {
        var (log, sink) = Pipeline();
        log.Warning(Gated, Peer, 5000, Disassociation());
        log.Error(Disassociation(), "Disassociated");

        var line = Assert.Single(sink.Events);
        Assert.Equal(LogEventLevel.Information, line.Level);
        Assert.Null(line.Exception);
        Assert.Equal($"Association with remote system {Peer} ended (the peer closed its connection: a client that exited, or a node that left or died); address is now gated for 5000 ms.",
            line.RenderMessage(System.Globalization.CultureInfo.InvariantCulture));

        // A command that logs warnings only (bench) shows neither.
        var (quiet, none) = Pipeline(LogEventLevel.Warning);
        quiet.Warning(Gated, Peer, 5000, Disassociation());
        quiet.Error(Disassociation(), "Disassociated");
        Assert.Empty(none.Events);
    }

    [Fact]
    public void A_node_told_it_was_quarantined_gets_one_warning_line_without_the_stack()
    {
        // A node frozen (SIGSTOP) past stable-after and woken: every 5 s, for each peer, until its
        // own split-brain resolver downed it (about 20 s), Akka.Remote logged this ERROR with the
        // endpoint reader's stack inside its text (an outside freeze audit).
        const string Quarantined = "AssociationError [akka.tcp://actorblk@127.0.0.1:49103] -> akka.tcp://actorblk@127.0.0.1:49101: " +
            "Error [The remote system has quarantined this system. No further associations to the remote system are possible until this system is restarted.] " +
            "[   at Akka.Remote.EndpointReader.<Reading>b__11_1(Disassociated disassociated)\n   at Akka.Actor.ActorCell.Invoke(Envelope envelope)]";
        var (log, sink) = Pipeline();
        log.Error(Quarantined);

        var line = Assert.Single(sink.Events);
        Assert.Equal(LogEventLevel.Warning, line.Level);
        Assert.Null(line.Exception);
        var text = line.RenderMessage(System.Globalization.CultureInfo.InvariantCulture);
        Assert.StartsWith("AssociationError [akka.tcp://actorblk@127.0.0.1:49103] -> akka.tcp://actorblk@127.0.0.1:49101: Error [The remote system has quarantined this system.", text, StringComparison.Ordinal);
        Assert.DoesNotContain(" at ", text, StringComparison.Ordinal);
        Assert.Contains("the cluster removed this node", text, StringComparison.Ordinal);

        // As Akka.Logger.Serilog may pass it: a format and the text as its argument.
        var (formatted, second) = Pipeline();
        formatted.Error("{0}", Quarantined);
        Assert.DoesNotContain(" at ", Assert.Single(second.Events).RenderMessage(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);

        // An error-level-only log (a client command) shows nothing of it.
        var (quiet, none) = Pipeline(LogEventLevel.Error);
        quiet.Error(Quarantined);
        Assert.Empty(none.Events);

        // Another association error keeps its level and text.
        var (other, kept) = Pipeline();
        other.Error("AssociationError [akka.tcp://actorblk@127.0.0.1:1] -> akka.tcp://actorblk@127.0.0.1:2: Error [Connection refused] [   at X]");
        Assert.Equal(LogEventLevel.Error, Assert.Single(kept.Events).Level);
    }

    [Fact]
    public void Every_other_event_passes_unchanged()
    {
        var (log, sink) = Pipeline();
        var refused = new InvalidOperationException("Connection refused tcp://actorblk@127.0.0.1:14363");
        log.Warning(Gated, "akka.tcp://actorblk@127.0.0.1:14363", 5000, refused);
        var bug = new InvalidOperationException("a bug of ours");
        log.Error(bug, "ActorBlk failed");
        log.Warning("Association with remote system {0} has failed", Peer);

        Assert.Equal(3, sink.Events.Count);
        Assert.Equal(LogEventLevel.Warning, sink.Events[0].Level);
        Assert.Contains("Connection refused", sink.Events[0].RenderMessage(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
        Assert.Same(bug, sink.Events[1].Exception);
        Assert.Equal(LogEventLevel.Warning, sink.Events[2].Level);
    }
}
