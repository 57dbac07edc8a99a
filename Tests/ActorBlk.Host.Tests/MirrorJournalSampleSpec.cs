using System.Globalization;
using System.Text.RegularExpressions;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Samples.MirrorJournal;
using ActorBlk.Testing;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 13 item 8: the MirrorJournal sample run as a user runs it, in chaos mode. It is the
/// cluster's first node and keeps a journal on a mirror over its own file leg and a file leg on a
/// second node (`actorblk serve`, its child); it kills that node with SIGKILL while appending,
/// goes on degraded, starts the node again at the same address once the cluster downed it, watches
/// the mirror take the leg back and resync it, and at the end reads every record back from each
/// leg on its own.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed partial class MirrorJournalSampleSpec(ITestOutputHelper output)
{
    // Liveness only: the run takes about a minute on a loaded 2-core machine.
    private static readonly TimeSpan Within = TimeSpan.FromMinutes(5);

    [GeneratedRegex(@"resync done: leg journal-leg1@127\.0\.0\.1:\d+ is in sync again; copied (?<copied>\d+) of (?<regions>\d+) regions")]
    private static partial Regex ResyncLine();

    [GeneratedRegex(@"journal stopped \(the chaos steps are done\): (?<written>\d+) records written, (?<degraded>\d+) of them while degraded")]
    private static partial Regex StoppedLine();

    [Fact]
    public async Task The_journal_goes_on_while_the_second_node_is_killed_then_only_dirty_regions_are_resynced_and_both_legs_hold_every_record()
    {
        using var dir = new TempDirectory("mirror-journal");
        var config = dir.File("hocon.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + """

            # The killed node is downed sooner than with the shipped 20 s.
            akka.cluster.split-brain-resolver.stable-after = 3s
            # A node starved by test assemblies running beside this one is not taken for a crashed one.
            akka.cluster.failure-detector.acceptable-heartbeat-pause = 8s
            """);

        await using var sample = ActorBlkProcess.StartProgram(RepositoryFiles.Sample("MirrorJournal"),
            "--chaos", "--config", config, "--port", "0", "--dir", dir.Path, "--leg-mib", "64", "--region-kib", "256",
            "--rate", "100", "--kill-at", "200", "--degraded-records", "200", "--after-records", "100", "--patience", "240");
        try
        {
            await sample.WaitForLineAsync(l => l.Contains("initial sync done: copied 256 of 256 regions", StringComparison.Ordinal), Within);
            await sample.WaitForLineAsync(l => l.Contains("chaos: kill -9 of the second node", StringComparison.Ordinal), Within);
            await sample.WaitForLineAsync(l => l.Contains("mirror degraded: leg journal-leg1@127.0.0.1:", StringComparison.Ordinal), Within);
            await sample.WaitForLineAsync(l => l.Contains("chaos: restarting the second node", StringComparison.Ordinal), Within);
            var resync = ResyncLine().Match(await sample.WaitForLineAsync(l => ResyncLine().IsMatch(l), Within));

            Assert.Equal(0, await sample.WaitForExitAsync(Within));
            var copied = long.Parse(resync.Groups["copied"].Value, CultureInfo.InvariantCulture);
            var regions = long.Parse(resync.Groups["regions"].Value, CultureInfo.InvariantCulture);
            Assert.Equal(256, regions);
            Assert.InRange(copied, 1, regions - 1); // the regions written while degraded, not the whole leg

            var stopped = StoppedLine().Match(sample.StandardOutput);
            Assert.True(stopped.Success, sample.Output);
            var written = long.Parse(stopped.Groups["written"].Value, CultureInfo.InvariantCulture);
            Assert.True(long.Parse(stopped.Groups["degraded"].Value, CultureInfo.InvariantCulture) >= 200, sample.Output);
            Assert.True(written >= 500, sample.Output);
            Assert.Contains($"verify journal-leg0 (local): {written} of {written} records ok", sample.StandardOutput, StringComparison.Ordinal);
            Assert.Matches($@"verify journal-leg1@127\.0\.0\.1:\d+ \(remote\): {written} of {written} records ok", sample.StandardOutput);
            Assert.Contains($"verified: both legs hold all {written} records, identical", sample.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("second node stopped (exit code 0)", sample.StandardOutput, StringComparison.Ordinal);
        }
        finally
        {
            output.WriteLine(sample.Output);
        }
    }

    // An outside TLS audit: with a hocon.conf set up as README's "Security" says (TLS remoting with
    // a pinned self-signed certificate, NBD with TLS required), the sample built its actor system
    // without ActorBlk's TLS setup; Akka validated the chain itself, refused the second node's
    // certificate, and the second node never joined (it stopped, exit 1, and the sample failed).
    [Fact]
    public async Task The_journal_runs_over_tls_remoting_and_tls_exports_set_up_as_readme_says()
    {
        using var dir = new TempDirectory("mirror-journal-tls");
        {
            using var certificate = ActorBlk.Testing.TestCertificates.SelfSigned();
            await File.WriteAllBytesAsync(dir.File("node.pfx"), certificate.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12, "pfx-password"));
            await File.WriteAllBytesAsync(dir.File("nbd.pfx"), certificate.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12));
            await File.WriteAllTextAsync(dir.File("node.pem"), certificate.ExportCertificatePem());
        }

        var config = dir.File("hocon.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + $$"""

            akka.cluster.split-brain-resolver.stable-after = 3s
            akka.cluster.failure-detector.acceptable-heartbeat-pause = 8s
            akka.remote.dot-netty.tcp { enable-ssl = on, ssl.certificate { path = {{System.Text.Json.JsonSerializer.Serialize(dir.File("node.pfx"))}}, password = "pfx-password" } }
            actorblk.remote.admin-secret = "mirror-journal-tls"
            actorblk.nbd { tls = require, certificate = {{System.Text.Json.JsonSerializer.Serialize(dir.File("nbd.pfx"))}} }
            actorblk.cluster.registry.tls-ca = {{System.Text.Json.JsonSerializer.Serialize(dir.File("node.pem"))}}
            """);

        await using var sample = ActorBlkProcess.StartProgram(RepositoryFiles.Sample("MirrorJournal"),
            "--chaos", "--config", config, "--port", "0", "--dir", dir.Path, "--leg-mib", "16", "--region-kib", "256",
            "--rate", "100", "--kill-at", "50", "--degraded-records", "50", "--after-records", "30", "--patience", "240");
        try
        {
            Assert.Equal(0, await sample.WaitForExitAsync(Within));
            Assert.Contains("chaos: kill -9 of the second node", sample.StandardOutput, StringComparison.Ordinal);
            Assert.Matches(@"resync done: leg journal-leg1@127\.0\.0\.1:\d+ is in sync again", sample.StandardOutput);
            Assert.Contains("verified: both legs hold all", sample.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("nbds://127.0.0.1:", File.ReadAllText(dir.File("node2.log")), StringComparison.Ordinal);
        }
        finally
        {
            output.WriteLine(sample.Output);
        }
    }

    // A sample walk-through: Ctrl-C while the sample waited for its second node was reported as
    // "no live device journal-leg1 appeared in the cluster within 300 s", and a usage error exited
    // 1, the sample's "records NOT verified".
    [Fact]
    public async Task Ctrl_c_while_waiting_for_the_second_node_says_so_and_a_usage_error_exits_2()
    {
        using var dir = new TempDirectory("mirror-journal-stop");
        await using (var sample = ActorBlkProcess.StartProgram(RepositoryFiles.Sample("MirrorJournal"), "--config", RepositoryFiles.Hocon(), "--port", "0", "--dir", dir.Path, "--patience", "240"))
        {
            await sample.WaitForLineAsync(l => l.Contains("waiting for device journal-leg1 on a second node", StringComparison.Ordinal), Within);
            sample.Signal(2); // SIGINT, as Ctrl-C
            Assert.Equal(1, await sample.WaitForExitAsync(Within));
            Assert.Contains("stopped by Ctrl-C (before device journal-leg1 appeared; nothing was written); NOT verified", sample.StandardOutput, StringComparison.Ordinal);
            Assert.DoesNotContain("TimeoutException", sample.Output, StringComparison.Ordinal);
        }

        await using var bogus = ActorBlkProcess.StartProgram(RepositoryFiles.Sample("MirrorJournal"), "--bogus");
        Assert.Equal(2, await bogus.WaitForExitAsync(Within));
        Assert.Contains("MirrorJournal: Unrecognized command or argument '--bogus'", bogus.StandardError, StringComparison.Ordinal);
    }

    // What the run's verification rests on: a record that is not exactly the one appended is refused.
    [Fact]
    public void A_journal_record_verifies_only_as_appended_in_its_own_slot()
    {
        var slot = new byte[JournalRecord.SlotBytes];
        JournalRecord.Encode(slot, 41, DateTime.UtcNow);
        Assert.Null(JournalRecord.Verify(slot, 41));
        Assert.Equal("holds sequence number 41", JournalRecord.Verify(slot, 42));

        var flipped = (byte[])slot.Clone();
        flipped[JournalRecord.HeaderBytes + 3] ^= 0x10;
        Assert.Equal("checksum mismatch", JournalRecord.Verify(flipped, 41));

        var tail = (byte[])slot.Clone();
        tail[^1] = 1;
        Assert.Equal("payload differs from what was appended", JournalRecord.Verify(tail, 41));
        Assert.Equal("empty slot", JournalRecord.Verify(new byte[JournalRecord.SlotBytes], 41));
    }
}
