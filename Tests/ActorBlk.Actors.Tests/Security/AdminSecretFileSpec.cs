using ActorBlk.Actors.Serialization;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>
/// <c>actorblk.remote.admin-secret-file</c>, created by the first node that finds it missing
/// (README, "Remoting"): nodes started together on a fresh machine all end with the one secret.
/// </summary>
public sealed class AdminSecretFileSpec : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"actorblk-secret-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    // Found in a review: the file was created empty and then written, so a node starting beside
    // the creator could read it in between and get no secret (its registry entries unsigned, its
    // peers' refused), or an empty one from the "created first" path. Now it is written to a
    // temporary file and linked into place, so a reader sees no file or the whole secret.
    [Fact]
    public async Task Nodes_that_create_the_missing_file_at_once_all_get_the_one_secret_it_holds()
    {
        const int Rounds = 500;
        const int Nodes = 8;
        for (var round = 0; round < Rounds; round++)
        {
            var file = Path.Combine(_dir, $"r{round}", "admin-secret");
            var config = ConfigurationFactory.ParseString($"actorblk.remote.admin-secret-file = \"{file}\"");
            using var start = new Barrier(Nodes);
            var secrets = await Task.WhenAll(Enumerable.Range(0, Nodes).Select(_ => Task.Factory.StartNew(
                () =>
                {
                    start.SignalAndWait();
                    return RemoteSurface.ResolveSecret(config, create: true);
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default)));

            var written = File.ReadAllText(file).Trim();
            Assert.Equal(64, written.Length);
            Assert.All(secrets, s => Assert.Equal(written, s));
            Assert.Single(Directory.GetFiles(Path.GetDirectoryName(file)!)); // no temporary file left
            if (!OperatingSystem.IsWindows())
            {
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(file));
            }
        }
    }
}
