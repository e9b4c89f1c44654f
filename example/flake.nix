# A small flake the project's own pipeline builds with the greedy-nix component (dogfooding):
# a chain of derivations, so the job log shows paths pushed while later ones still build.
{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      forAll = nixpkgs.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ];
    in
    {
      packages = forAll (system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          step = name: dep: pkgs.runCommand name { } ''
            echo "building ${name}"
            sleep 2
            mkdir -p $out
            echo ${name} > $out/name
            ${if dep == null then "" else "cp ${dep}/name $out/previous"}
          '';
          one = step "greedy-example-one" null;
          two = step "greedy-example-two" one;
        in
        {
          default = step "greedy-example-three" two;
        });
    };
}
